#!/usr/bin/env bash
# Fill .whl (git-ignored) with the wheels benchmarks/gpu.sh needs on a GPU machine that cannot
# reach a package index: run this where pip can, then carry .whl to that machine.
#
#   bash benchmarks/gpu_wheels.sh [python-version (3.12)]
#
# Only what such machines' images lack (their PyTorch, NumPy, SciPy, Numba, xarray, pandas, PyYAML,
# tqdm and attrs are used as they are): Zarr, numcodecs, Dask and jsonschema with their own
# needs, at this project's tested versions, for CPython on x86-64 Linux. About 10 MB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYV="${1:-3.12}"
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 dask==2026.8.0 partd==1.4.2
        locket==1.0.0 array-api-compat==1.16.0 jsonschema==4.26.0 jsonschema-specifications referencing rpds-py)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls .whl
du -sh .whl
