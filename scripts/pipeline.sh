#!/usr/bin/env bash
# Set up .venv if needed, then run the whole workflow on the default config.
# Extra arguments go to snakemake, e.g.:
#   bash scripts/pipeline.sh -n                          # dry run
#   bash scripts/pipeline.sh --configfile my.yaml        # another config
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"   # rules call the `infodissect` CLI
exec .venv/bin/snakemake --cores all --workflow-profile workflow/profiles/default "$@"
