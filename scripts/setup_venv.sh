#!/usr/bin/env bash
# Creates .venv if needed and installs the package into it: `setup_venv.sh [EXTRAS]`, e.g. "[test]".
# Versions come from requirements.lock (constraints: only what the extras need is installed);
# scripts/lock.sh regenerates it. Sourced by train.sh and test.sh from the repository root.
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c requirements.lock -e ".${1:-}"
