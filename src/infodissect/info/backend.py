"""The few operations the MI kernels need beyond the array API, for NumPy and PyTorch.

Kernels take NumPy arrays or PyTorch tensors (CPU or CUDA) and compute with the
library they were given (via ``array_api_compat``); this module supplies what the
array API standard lacks: conversions, indexing by NumPy indices, sums over classes,
the digamma terms of the bias correction, and returning freed memory to the OS.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np
import scipy.sparse
import scipy.special

Array = Any


def namespace(*arrays: Array) -> Any:
    """The array-API namespace of the arrays (NumPy or PyTorch)."""
    return array_api_compat.array_namespace(*arrays)


def is_torch(x: Array) -> bool:
    """True for a PyTorch tensor."""
    return array_api_compat.is_torch_array(x)


def like(values: Array | np.ndarray, ref: Array) -> Array:
    """``values`` (NumPy) as an array of ``ref``'s library, dtype and device."""
    if is_torch(ref):
        import torch

        return torch.as_tensor(np.asarray(values), dtype=ref.dtype, device=ref.device)
    return np.asarray(values, dtype=ref.dtype)


def to_numpy(x: Array) -> np.ndarray:
    """A NumPy copy (or view) of an array of either library."""
    return x.detach().cpu().numpy() if is_torch(x) else np.asarray(x)


def class_sums(x: Array, labels: np.ndarray, n_classes: int) -> Array:
    """Sum of the rows of ``x`` (n, ...) per class: (n_classes, ...), one pass, no class loop."""
    flat = x.reshape(x.shape[0], -1)
    if is_torch(x):
        import torch

        idx = torch.as_tensor(labels, device=x.device, dtype=torch.int64)
        out = torch.zeros((n_classes, flat.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, idx, flat)
    else:
        onehot = scipy.sparse.csr_matrix(
            (np.ones(len(labels), dtype=x.dtype), (labels, np.arange(len(labels)))), shape=(n_classes, len(labels)))
        out = np.asarray(onehot @ flat)
    return out.reshape((n_classes,) + tuple(x.shape[1:]))


def take(x: Array, index: np.ndarray, axis: int = 0) -> Array:
    """``x`` indexed by an integer NumPy array along ``axis``."""
    if is_torch(x):
        import torch

        return torch.index_select(x, axis, torch.as_tensor(index, device=x.device, dtype=torch.int64))
    return np.take(x, index, axis=axis)


def psi_half(v: np.ndarray) -> np.ndarray:
    """digamma(v / 2) / 2, the bias-correction term of Ince et al. (float64, NumPy)."""
    return scipy.special.digamma(np.asarray(v, dtype=np.float64) / 2.0) / 2.0
