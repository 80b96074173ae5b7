"""The few operations the MI kernels need beyond the array API, for NumPy and PyTorch.

Kernels take NumPy arrays or PyTorch tensors (CPU or CUDA) and compute with the
library they were given (via ``array_api_compat``); this module supplies what the
array API standard lacks: special functions, stable sorting, seeded uniforms and
sums over classes.
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


def ndtri(x: Array) -> Array:
    """Inverse of the standard normal CDF, elementwise."""
    if is_torch(x):
        import torch

        return torch.special.ndtri(x)
    return scipy.special.ndtri(x)


def argsort(x: Array, axis: int = 0) -> Array:
    """Stable argsort along ``axis``."""
    if is_torch(x):
        import torch

        return torch.sort(x, dim=axis, stable=True).indices
    return np.argsort(x, axis=axis, kind="stable")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def column_uniforms(columns: Array, seed: int) -> Array:
    """Seeded uniforms in [0, 1), one per element of ``columns`` (n, m), for breaking ties.

    Each column's stream is a hash of the seed, the sample position and the column's
    own values, so it does not depend on which other columns share the array (chunking),
    and NumPy and PyTorch get the same numbers. Identical columns get identical streams;
    different columns get independent ones.
    """
    v = np.ascontiguousarray(to_numpy(columns), dtype=np.float64).view(np.uint64)
    i = np.arange(v.shape[0], dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        fingerprint = _splitmix64(v ^ _splitmix64(i * _GOLDEN + np.uint64(1))).sum(axis=0, dtype=np.uint64)
        z = _splitmix64(_splitmix64(fingerprint[None, :] ^ np.uint64(seed % 2**64)) + i * _GOLDEN)
    return like((z >> np.uint64(11)).astype(np.float64) * 2.0**-53, columns)


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


def take_along(x: Array, index: Array, axis: int = 0) -> Array:
    """``x`` gathered along ``axis`` by an index array of the same shape."""
    if is_torch(x):
        import torch

        return torch.gather(x, axis, index)
    return np.take_along_axis(x, index, axis=axis)


def inverse_permutation(order: Array) -> Array:
    """Ranks from a per-column sort order (n, m): ``ranks[order[i, j], j] = i``."""
    n = order.shape[0]
    if is_torch(order):
        import torch

        ar = torch.arange(n, device=order.device).view(-1, 1).expand_as(order)
        return torch.empty_like(order).scatter_(0, order, ar)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(n)[:, None], order.shape), axis=0)
    return ranks


def as_index(index: np.ndarray, ref: Array) -> Array:
    """An int64 index array of ``ref``'s library and device."""
    if is_torch(ref):
        import torch

        return torch.as_tensor(index, dtype=torch.int64, device=ref.device)
    return np.asarray(index, dtype=np.int64)


def release_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``), so that a long run of
    chunk-sized allocations does not keep the process's resident memory growing; a
    no-op elsewhere (the advice dask gives for worker memory)."""
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None
