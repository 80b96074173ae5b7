#!/usr/bin/env bash
# Fill .whl (git-ignored) with the wheels benchmarks/gpu.sh needs on a GPU machine that cannot
# reach a package index: run this where pip can, then carry .whl to that machine.
#
#   bash benchmarks/gpu_wheels.sh [python-version (3.12)]
#
# The list is benchmarks/gpu_requirements.txt (what such machines' images lack), for CPython
# on x86-64 Linux. About 10 MB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYV="${1:-3.12}"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl -r benchmarks/gpu_requirements.txt
ls .whl
du -sh .whl
