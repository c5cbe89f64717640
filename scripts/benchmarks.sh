#!/usr/bin/env bash
# Every variant, train and infer, ours and its PyTorch reference where one exists, one JSON object per
# row appended to OUT (default benchmarks/cpu.jsonl), then the markdown table BENCHMARKS.md shows.
# Extra arguments go to every `inception-bench` call, e.g.
#   scripts/benchmarks.sh benchmarks/gpu.jsonl --batch-size 256 --dtype bfloat16 --ref-compile --ref-channels-last
# Then one row for the training input pipeline on this host's CPUs (inception_v3's, 299 px, batch 32, the
# built-in sample_photos JPEGs): it gets the same extra arguments, and ignores those of the model step
# (--dtype, --ref-compile, ...; a note says so) and keeps batch 32 whatever --batch-size they give.
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
    "$python" -m inception_jax.tools.bench --model "$model" --mode "$mode" "${compare[@]}" --json "$@" | tail -n 1 >> "$out"
  done
done
echo "== inception_v3 input" >&2
"$python" -m inception_jax.tools.bench --model inception_v3 --mode input --steps 20 "$@" --batch-size 32 --json \
  | tail -n 1 >> "$out"
"$python" -m inception_jax.tools.bench --table "$out"
