"""Process memory helpers shared by the stages that stream data chunk by chunk."""

from __future__ import annotations

from typing import Any


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
