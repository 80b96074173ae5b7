#!/usr/bin/env bash
# Set up the project's virtual environment in .venv (idempotent).
#
#   bash scripts/setup.sh          # or: source scripts/setup.sh
#
# Creates .venv with python3 (>= 3.11) if absent and installs infodissect in
# editable mode with its test extra. On a machine without nvidia-smi, torch
# 2.13.0 is installed first (a CPU build where one is available locally) so the
# `torch>=2.3` requirement is already met; with nvidia-smi, pip installs the
# default (CUDA) torch build. zennit (the LRP reference of the tests) and
# torchattacks (the adversarial stage's attacks) are installed without their
# dependencies (both would pull torchvision; torchattacks pins an old requests). A stamp file .venv/.installed-<hash of pyproject.toml
# and this script> skips the installation when nothing changed.

infodissect_setup() {
    local root py hash stamp
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cd "$root" || return 1

    if [ ! -x .venv/bin/python ]; then
        py="${PYTHON:-python3}"
        if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "setup: infodissect needs Python >= 3.11 ($py is $("$py" --version 2>&1))" >&2
            return 1
        fi
        echo "setup: creating .venv with $py" >&2
        "$py" -m venv .venv || return 1
    fi

    hash="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
    stamp=".venv/.installed-$hash"
    if [ -e "$stamp" ]; then
        return 0
    fi

    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "setup: no nvidia-smi; installing CPU torch" >&2
        .venv/bin/python -m pip install torch==2.13.0 || return 1
    fi
    echo "setup: installing infodissect (editable) into .venv" >&2
    .venv/bin/python -m pip install -e ".[test]" || return 1
    # zennit, the reference the tests check the native LRP rules against: without its dependencies, as
    # its torchvision requirement would pull a CUDA build of PyTorch (tests stub torchvision's import).
    .venv/bin/python -m pip install --no-deps zennit==0.5.1 || return 1
    # torchattacks (MI-FGSM, PGD of the adversarial stage) imports only torch, numpy, scipy and tqdm, which
    # infodissect requires; its declared torchvision and requests~=2.25 requirements would pull CUDA
    # PyTorch and downgrade requests.
    .venv/bin/python -m pip install --no-deps torchattacks==3.5.1 || return 1
    rm -f .venv/.installed-*
    touch "$stamp"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    infodissect_setup
else
    infodissect_setup || return 1
fi
