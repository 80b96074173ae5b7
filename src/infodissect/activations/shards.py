"""Zarr v3 internals of the activation store: its skeleton written once, and batches written straight into
preallocated shard files (``pwrite``, with O_DIRECT where the file system allows), bypassing zarr's per-chunk
writes. What these files hold is read back through zarr (and the store layer) as usual."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr


def write_skeleton(tree: xr.DataTree, path: Path) -> None:
    """Write a store's metadata and coordinates (not its activations), consolidating the metadata once.

    xarray writes the root and the first layer group; every other layer group is that
    group's copy (the same factor coordinates, already encoded) with its own group
    attributes and its own ``activation`` array metadata (shape, chunks, dims, layer
    attributes), edited as zarr v3 JSON. Writing ~20 coordinate arrays per layer through
    xarray cost a second or more per store, longer than extracting the demo set.
    """
    import shutil

    tree.root.to_dataset(inherit=False).to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False)
    names = list(tree.children)
    for k, name in enumerate(names):
        ds = tree[name].to_dataset(inherit=True)
        if k == 0:
            ds.to_zarr(path, group=name, mode="w", compute=False, zarr_format=3, consolidated=False)
            continue
        shutil.copytree(path / names[0], path / name)
        _edit_json(path / name / "zarr.json", lambda meta: meta.update(attributes=dict(ds.attrs)))
        act = ds["activation"]

        def array_meta(meta: dict[str, Any], act: xr.DataArray = act) -> None:
            meta["shape"] = list(act.shape)
            meta["chunk_grid"]["configuration"]["chunk_shape"] = list(act.encoding["shards"])
            (sharding,) = meta["codecs"]
            sharding["configuration"]["chunk_shape"] = list(act.encoding["chunks"])
            meta["dimension_names"] = list(act.dims)
            meta["attributes"].update({k: v for k, v in act.attrs.items()})

        _edit_json(path / name / "activation" / "zarr.json", array_meta)
    zarr.consolidate_metadata(str(path))
    group = zarr.open_group(str(path), mode="r+")
    for name in names:
        ShardWriter(group[name]["activation"]).allocate()


def _edit_json(path: Path, edit: Any) -> None:
    """Apply ``edit`` to the JSON document at ``path`` (in place)."""
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))


class ShardWriter:
    """Writes batches of an activation array straight into its shard files.

    A layer's array is sharded (zarr v3 ``sharding_indexed``): a shard file holds whole
    batches of every unit, as uncompressed inner chunks at fixed offsets, so its index
    is known before any value is: :meth:`allocate` sizes each shard file (sparse) and
    writes its index once, and each batch is then a few ``pwrite`` calls into files
    that already exist (worker processes write their own ranges of the same files).
    Per-chunk files cost a file creation each, slower than the forward pass on some
    file systems. Anything but a local store with this layout is written through zarr.
    """

    def __init__(self, arr: zarr.Array) -> None:
        self.arr = arr
        self.fds: dict[Path, int] = {}
        self.direct: dict[Path, int | None] = {}
        self.root: Path | None = None
        store = arr.store_path.store
        codecs = arr.metadata.codecs
        if not (isinstance(store, zarr.storage.LocalStore) and len(codecs) == 1
                and type(codecs[0]).__name__ == "ShardingCodec" and np.little_endian):
            return
        shard = codecs[0]
        inner = [type(c).__name__ for c in shard.codecs]
        index = [type(c).__name__ for c in shard.index_codecs]
        if (inner != ["BytesCodec"] or index not in (["BytesCodec"], ["BytesCodec", "Crc32cCodec"])
                or shard.index_location.value != "end"):
            return
        self.root = Path(store.root) / arr.store_path.path
        self.checksum = index[-1] == "Crc32cCodec"
        self.inner = tuple(shard.chunk_shape)
        self.shard = tuple(arr.metadata.chunk_grid.chunk_shape)
        self.per_shard = tuple(s // c for s, c in zip(self.shard, self.inner))  # (batches, unit chunks, 1, 1)
        self.chunk_bytes = int(np.prod(self.inner)) * arr.dtype.itemsize

    def allocate(self) -> None:
        """Create every shard file at its full size (sparse), its index at the end."""
        if self.root is None:
            return
        count = int(np.prod(self.per_shard))
        offsets = np.arange(count, dtype="<u8") * self.chunk_bytes
        index = np.stack([offsets, np.full(count, self.chunk_bytes, dtype="<u8")], 1).tobytes()
        if self.checksum:
            import google_crc32c

            index += np.uint32(google_crc32c.value(index)).astype("<u4").tobytes()
        for s in range(-(-self.arr.shape[0] // self.shard[0])):
            with open(self._path(s), "wb") as fh:
                fh.seek(count * self.chunk_bytes)
                fh.write(index)

    def _path(self, shard: int) -> Path:
        assert self.root is not None
        return self.root / self.arr.metadata.encode_chunk_key((shard,) + (0,) * (len(self.shard) - 1))

    def __call__(self, start: int, values: np.ndarray) -> None:
        """Write ``values`` (m, units, ...) for samples ``start:start + m`` (``start`` on a batch boundary)."""
        if self.root is None or start % self.inner[0] or len(values) > self.inner[0]:
            self.arr[start:start + len(values)] = values
            return
        c = start // self.inner[0]
        shard, i = divmod(c, self.per_shard[0])
        path = self._path(shard)
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_WRONLY)
            self.direct[path] = _open_direct(path)
        u = self.inner[1]
        for j in range(self.per_shard[1]):
            block = values[:, j * u:(j + 1) * u]
            if block.shape[1] < u:  # the last unit chunk is padded to full size
                block = np.concatenate([block, np.zeros((len(block), u - block.shape[1]) + block.shape[2:],
                                                        block.dtype)], 1)
            data = memoryview(np.ascontiguousarray(block, dtype=self.arr.dtype)).cast("B")
            offset = (i * self.per_shard[1] + j) * self.chunk_bytes
            direct = self.direct[path]
            if not (direct is not None and _aligned(data, offset) and _pwrite(direct, data, offset)):
                os.pwrite(self.fds[path], data, offset)

    def close(self) -> None:
        for fd in list(self.fds.values()) + [d for d in self.direct.values() if d is not None]:
            os.close(fd)
        self.fds.clear()
        self.direct.clear()


_ALIGN = 4096  # O_DIRECT needs buffer address, size and file offset aligned to the device's blocks


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array in page-aligned (anonymous mmap) memory, which O_DIRECT writes can use."""
    import mmap

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype=np.uint8)[:nbytes].view(dtype).reshape(shape)


def _open_direct(path: Path) -> int | None:
    """A second descriptor of ``path`` that bypasses the page cache (O_DIRECT), where the OS and file system allow.

    Full, aligned chunks go straight to the device (DMA): the copy into the page cache would
    otherwise take the CPU time the forward pass needs, and more of it on some file systems.
    """
    if not hasattr(os, "O_DIRECT"):
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError:  # e.g. tmpfs
        return None


def _aligned(data: memoryview, offset: int) -> bool:
    address = np.frombuffer(data, dtype=np.uint8).ctypes.data if len(data) else 0
    return address % _ALIGN == 0 and len(data) % _ALIGN == 0 and offset % _ALIGN == 0


def _pwrite(fd: int, data: memoryview, offset: int) -> bool:
    """``os.pwrite`` of all of ``data``; False (nothing to retry from) if the descriptor refuses it."""
    try:
        return os.pwrite(fd, data, offset) == len(data)
    except OSError:
        return False
