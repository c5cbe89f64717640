#!/usr/bin/env bash
# Sets up .venv (if needed) and trains the quickstart model on the built-in digits dataset.
# Extra arguments go to inception_jax.main, e.g. --config.num_epochs=5. Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m inception_jax.main --config=configs/digits.py --workdir="${WORKDIR:-runs/digits}" "$@"
