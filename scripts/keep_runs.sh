#!/usr/bin/env bash
# Copies what a study's report is made from into the repository: the sweep's manifest and each run's
# config.json, environment.json, metrics.jsonl and status.json (no checkpoints, logs or TensorBoard
# events), then regenerates the report from that copy. tests/test_results.py checks that every
# committed report regenerates from its committed runs, byte for byte.
#   bash scripts/keep_runs.sh runs/regime_pilot experiments/results/regime_pilot
set -euo pipefail
cd "$(dirname "$0")/.."
sweep_dir=${1:?usage: keep_runs.sh SWEEP_DIR RESULTS_DIR}
results=${2:?usage: keep_runs.sh SWEEP_DIR RESULTS_DIR}
[ -f "$sweep_dir/sweep.json" ] || { echo "error: $sweep_dir has no sweep.json (not a sweep's --workdir)" >&2; exit 2; }
rm -rf "$results/runs"
mkdir -p "$results/runs"
cp "$sweep_dir/sweep.json" "$results/runs/"
for run in "$sweep_dir"/*/; do
  [ -f "$run/config.json" ] || continue
  name=$(basename "$run")
  mkdir -p "$results/runs/$name"
  for f in config.json environment.json metrics.jsonl status.json; do
    [ -f "$run/$f" ] && cp "$run/$f" "$results/runs/$name/"
  done
done
.venv/bin/python -m inception_jax.tools.report "$results/runs" --out "$results"
