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
[ -x .venv/bin/python ] || { echo "error: no .venv (run scripts/test.sh or source scripts/setup_venv.sh first)" >&2; exit 2; }
[ -f "$sweep_dir/sweep.json" ] || { echo "error: $sweep_dir has no sweep.json (not a sweep's --workdir)" >&2; exit 2; }
rm -rf "$results/runs"
mkdir -p "$results/runs"
# The manifest names the machine's paths (the checkout, its Python, each run's --workdir); the kept copy
# names them relative to the checkout, so it reads the same on any clone.
.venv/bin/python - "$sweep_dir/sweep.json" "$results/runs/sweep.json" <<'PY'
import json, sys

manifest = json.load(open(sys.argv[1]))
root = manifest["root"].rstrip("/")


def relative(value):
    if isinstance(value, str):
        return value.replace(root + "/", "").replace(root, ".")
    if isinstance(value, list):
        return [relative(v) for v in value]
    if isinstance(value, dict):
        return {k: relative(v) for k, v in value.items()}
    return value


kept = relative(manifest) if root not in ("", ".") else manifest  # a kept copy is already relative
python = kept["python"]  # a venv outside the checkout (a worktree run with the main checkout's .venv)
if python.startswith("/"):
    kept["python"] = python[python.rindex("/.venv/") + 1 :] if "/.venv/" in python else python.rsplit("/", 1)[-1]
with open(sys.argv[2], "w") as f:
    json.dump(kept, f, indent=1)
    f.write("\n")
PY
for run in "$sweep_dir"/*/; do
  [ -f "$run/config.json" ] || continue
  name=$(basename "$run")
  mkdir -p "$results/runs/$name"
  for f in config.json environment.json metrics.jsonl status.json; do
    [ -f "$run/$f" ] && cp "$run/$f" "$results/runs/$name/"
  done
done
.venv/bin/python -m inception_jax.tools.report "$results/runs" --out "$results"
