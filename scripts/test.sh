#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest:
#   bash scripts/test.sh -q
#   bash scripts/test.sh tests/test_config.py -k unknown
# The tests run in 2 worker processes (pytest-xdist; tests/conftest.py starts the longest first, and idle
# workers take queued tests from busy ones): the end-to-end pipeline test overlaps the rest of the suite.
# INFODISSECT_TEST_WORKERS=0 runs them in this process; a later `-n N` argument overrides the default.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"   # tests run snakemake and the `infodissect` CLI
exec .venv/bin/python -m pytest -n "${INFODISSECT_TEST_WORKERS:-2}" --dist worksteal "$@"
