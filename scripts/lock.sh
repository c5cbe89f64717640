#!/usr/bin/env bash
# Regenerates requirements.lock, the resolved environment setup_venv.sh installs with (as constraints:
# pyproject.toml keeps lower bounds). Pins already in the lock are kept; `bash scripts/lock.sh --upgrade`
# (or `--upgrade-package jax`) moves them. Needs the package index; run from a set-up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q uv
.venv/bin/uv pip compile pyproject.toml --all-extras --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "bash scripts/lock.sh" --output-file requirements.lock "$@"
