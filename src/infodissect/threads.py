"""Threads and devices: the thread counts of the compiled (Numba) kernels and PyTorch, and the one resolution
of a configured device name (``cpu``, ``cuda``, ``auto``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def match_numba_threads() -> None:
    """Run Numba's parallel loops on as many threads as PyTorch uses (a rule's ``threads``),
    never more than Numba's pool holds."""
    import numba
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (CUDA when available) as a torch device; ``key`` names the setting in errors."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is 'cuda' but no CUDA device is available")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"{key}: {name!r} is not cpu, cuda or auto")
    return torch.device(name)
