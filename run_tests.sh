#!/usr/bin/env bash
# Sets up the environment (cached venv outside the clone, keyed by the requirements' hash; Debian's
# fluidsynth + soundfont) and runs lint and the whole test suite, slow tests included.
# Fast local loop instead: $VENV/bin/python -m pytest -m "not slow"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
venv="$(bash .ci/setup_env.sh)"
export PATH="$venv/bin:$PATH"
echo "== ruff ($venv)"
ruff check .
echo "== pytest"
# two pytest-xdist workers (one per core here), whole test files per worker so module fixtures are built once, in
# the order conftest.py gives (longest first);
# PYTEST_WORKERS=0 runs in one process
python -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=15 "$@"
