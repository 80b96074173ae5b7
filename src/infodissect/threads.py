"""Thread counts shared by the compiled (Numba) kernels and PyTorch."""

from __future__ import annotations


def match_numba_threads() -> None:
    """Run Numba's parallel loops on as many threads as PyTorch uses (a rule's ``threads``),
    never more than Numba's pool holds."""
    import numba
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
