#!/usr/bin/env bash
# Sets up .venv (if needed) with the package and its test extra, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh "[test]"
exec .venv/bin/python -m pytest -n 2 --dist worksteal -q "$@"
