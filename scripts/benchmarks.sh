#!/usr/bin/env bash
# Every variant, train and infer, ours and its PyTorch reference where one exists, one JSON object per
# row appended to OUT (default benchmarks/cpu.jsonl), then the markdown table BENCHMARKS.md shows.
# Extra arguments go to every `python -m inception_jax.bench` call, e.g.
#   scripts/benchmarks.sh benchmarks/gpu.jsonl --batch-size 256 --dtype bfloat16 --ref-compile --ref-channels-last
# Run it from a set-up checkout (scripts/setup_venv.sh "[test]": the references need timm and torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/cpu.jsonl}
shift || true
mkdir -p "$(dirname "$out")"
python=${PYTHON:-.venv/bin/python}
declare -A reference=([googlenet]=torchvision [inception_v3]=timm [inception_v4]=timm [inception_resnet_v2]=timm)
for model in googlenet bn_inception inception_v2 inception_v3 inception_v4 inception_resnet_v1 inception_resnet_v2; do
  for mode in train infer; do
    compare=()
    if [[ -n "${reference[$model]:-}" ]]; then compare=(--compare "${reference[$model]}"); fi
    echo "== $model $mode" >&2
    "$python" -m inception_jax.bench --model "$model" --mode "$mode" "${compare[@]}" --json "$@" | tail -n 1 >> "$out"
  done
done
"$python" -m inception_jax.bench --table "$out"
