#!/usr/bin/env bash
# Sets up .venv (if needed) and trains the quickstart model on the built-in digits dataset.
# Extra arguments go to inception_jax.trainer.main, e.g. --config.num_epochs=5. Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh ""  # no extras (an explicit argument: a sourced script sees ours otherwise)
exec .venv/bin/inception-train --config=configs/digits.py --workdir="${WORKDIR:-runs/digits}" "$@"
