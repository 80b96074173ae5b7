#!/usr/bin/env bash
# The one GPU check (issue 18): on a CUDA machine, set up what is needed from this repo, then
# measure and print one table (benchmarks/gpu.py says what). No arguments.
#
#   bash benchmarks/gpu.sh
#
# Exit status: 0 every check passed; 1 a check failed; 3 no CUDA device (said on one line,
# before anything is installed); anything else, the set-up failed.
#
# Python: the first of $PYTHON, .venv/bin/python, python3 whose torch sees a CUDA device.
# Set-up: the project and its dependencies go into a private folder (.gpu-site, git-ignored),
# not into that Python's own packages, from wheels in .whl when the folder exists (a machine
# with no package index: fill it on one that has one with `bash benchmarks/gpu_wheels.sh`),
# else from the package index. torch is never installed: the machine's CUDA build is used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

PY=""
for candidate in ${PYTHON:-} .venv/bin/python python3; do
  if command -v "$candidate" >/dev/null 2>&1 && has_cuda "$candidate"; then PY="$candidate"; break; fi
done
if [ -z "$PY" ]; then
  echo "no CUDA device: no Python here has a torch that sees a GPU (tried: ${PYTHON:-} .venv/bin/python python3); nothing to measure"
  exit 3
fi

SITE="$PWD/.gpu-site"
if ! PYTHONPATH="$SITE:$PWD/src" "$PY" -c 'import infodissect.config, infodissect.info, zarr, dask, xarray, numba, scipy, yaml, jsonschema' 2>/dev/null; then
  echo "setting up $SITE for $PY"
  mkdir -p "$SITE"
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  else
    # The project's requirements without torch (the machine's CUDA build stays) nor snakemake.
    REQS=$("$PY" - <<'EOF2'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if re.split(r"[<>=!~ \[;]", d)[0].lower() not in ("torch", "snakemake")))
EOF2
)
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --target "$SITE" $REQS
    rm -rf "$SITE"/torch "$SITE"/torch-* "$SITE"/nvidia* "$SITE"/triton*  # never shadow the machine's torch
  fi
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu.py
