#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest:
#   bash scripts/test.sh -q
#   bash scripts/test.sh tests/test_config.py -k unknown
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"   # tests run snakemake and the `infodissect` CLI
exec .venv/bin/python -m pytest "$@"
