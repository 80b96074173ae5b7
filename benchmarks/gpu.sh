#!/usr/bin/env bash
# The one GPU check (issue 18): on a CUDA machine, set up what is needed from this repo, then
# measure and print one table (benchmarks/gpu.py says what). No arguments.
#
#   bash benchmarks/gpu.sh
#
# Exit status: 0 every check passed; 1 a check failed; 2 a measurement broke (its error printed);
# 3 no CUDA device (said on one line, before anything is installed); 4 the set-up failed.
#
# Python: the first of $PYTHON, .venv/bin/python, python3 whose torch sees a CUDA device.
# Set-up: what that Python lacks (benchmarks/gpu_requirements.txt) goes into a private folder
# (.gpu-site, git-ignored), not into its own packages, from wheels in .whl when the folder exists
# (a machine with no package index: fill it where pip works with `bash benchmarks/gpu_wheels.sh`),
# else from the package index. Its torch, NumPy, SciPy and Numba are used as they are.
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
ready() { PYTHONPATH="$SITE:$PWD/src" "$PY" -c 'import infodissect.config, infodissect.info, zarr, dask, xarray, numba, scipy, yaml, jsonschema' 2>/dev/null; }
if ! ready; then
  echo "setting up $SITE for $PY"
  mkdir -p "$SITE"
  # --no-deps: only the listed packages, so the machine's NumPy (that its torch was built against) stays.
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  else
    "$PY" -m pip install -q --no-deps --target "$SITE" -r benchmarks/gpu_requirements.txt
  fi
  if ! ready; then
    echo "set-up failed: with $SITE, $PY still cannot import the project (see: PYTHONPATH=$SITE:src $PY -c 'import infodissect.info, zarr, dask, jsonschema')." \
         "It must bring PyTorch (CUDA), NumPy, SciPy, Numba, xarray, pandas and PyYAML itself; or run bash scripts/setup.sh" \
         "(a CUDA torch where nvidia-smi is found) and then PYTHON=.venv/bin/python bash benchmarks/gpu.sh"
    exit 4
  fi
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu.py "$@"
