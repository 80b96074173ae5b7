"""Zarr v3 internals of the activation store: its skeleton written once, batches written straight into
preallocated shard files (``pwrite``, with O_DIRECT where the file system allows), bypassing zarr's per-chunk
writes, and sample ranges read straight back from them (:func:`read_samples`, several times faster than
zarr's codec pipeline for the large reads of dissection). Both apply to one layout (:func:`shard_layout`:
a local store, uncompressed inner chunks, the shard index at the end); anything else goes through zarr."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ShardLayout:
    """Where the values of a sharded array lie in its files: shard files of ``shard`` values each, holding
    ``per_shard`` inner chunks of ``inner`` values, uncompressed, at the offsets of the index at the file's end."""

    root: Path
    inner: tuple[int, ...]
    shard: tuple[int, ...]
    per_shard: tuple[int, ...]
    chunk_bytes: int
    checksum: bool  # the index ends with its CRC-32C
    encode: Any  # chunk coordinates -> key

    def path(self, shard: int) -> Path:
        """The file of shard ``shard`` along the first axis."""
        return self.root / self.encode((shard,) + (0,) * (len(self.shard) - 1))


def shard_layout(arr: zarr.Array) -> ShardLayout | None:
    """The :class:`ShardLayout` of ``arr``, or None when its values are not plain bytes at known places of local
    files (not sharded, compressed inner chunks, index at the start, split along any axis but the first two,
    big-endian host)."""
    store = arr.store_path.store
    codecs = arr.metadata.codecs
    if not (isinstance(store, zarr.storage.LocalStore) and len(codecs) == 1
            and type(codecs[0]).__name__ == "ShardingCodec" and np.little_endian):
        return None
    sharding = codecs[0]
    inner = [type(c).__name__ for c in sharding.codecs]
    index = [type(c).__name__ for c in sharding.index_codecs]
    if (inner != ["BytesCodec"] or index not in (["BytesCodec"], ["BytesCodec", "Crc32cCodec"])
            or sharding.index_location.value != "end"):
        return None
    chunk, shard = tuple(sharding.chunk_shape), tuple(arr.metadata.chunk_grid.chunk_shape)
    if len(shard) > 1 and any(s < n for s, n in zip(shard[1:], arr.shape[1:])):
        return None  # a file would hold only some of the units
    if any(c < n or s != c for c, s, n in zip(chunk[2:], shard[2:], arr.shape[2:])):
        return None  # inner chunks split the maps, or a shard holds several along them
    return ShardLayout(Path(store.root) / arr.store_path.path, chunk, shard,
                       tuple(s // c for s, c in zip(shard, chunk)),
                       int(np.prod(chunk)) * arr.dtype.itemsize, index[-1] == "Crc32cCodec",
                       arr.metadata.encode_chunk_key)


_MISSING = 2**64 - 1  # an inner chunk that was never written (fill values)


def _shard_index(layout: ShardLayout, path: Path) -> np.ndarray:
    """(chunks, 2) offset and size of each inner chunk of a shard file, its CRC-32C checked."""
    from ..store import StoreError

    count = int(np.prod(layout.per_shard))
    size = 16 * count + 4 * layout.checksum
    with open(path, "rb") as fh:
        fh.seek(-size, os.SEEK_END)
        raw = fh.read(size)
    if layout.checksum:
        import google_crc32c

        if len(raw) != size or google_crc32c.value(raw[:-4]) != int(np.frombuffer(raw[-4:], "<u4")[0]):
            raise StoreError(f"{path}: the shard index is damaged (CRC-32C differs); rerun the job that makes it")
    return np.frombuffer(raw[:16 * count], "<u8").reshape(count, 2)


def read_samples(arr: zarr.Array, start: int, stop: int) -> np.ndarray:
    """``arr[start:stop]``: straight from the shard files (one read per inner chunk, no codec pipeline) when
    :func:`shard_layout` applies, else through zarr. The same values either way; the same :class:`StoreError`
    as a zarr read of a finished store for a missing file (the store layer checks files and sizes when it
    opens a store) and for a damaged shard index."""
    from ..store import StoreError

    layout = shard_layout(arr)
    start, stop = max(0, start), min(arr.shape[0], stop)
    if layout is None or stop <= start:
        return np.asarray(arr[start:stop])
    out = np.empty((stop - start,) + tuple(arr.shape[1:]), dtype=arr.dtype)
    rows, units = layout.inner[0], layout.inner[1] if len(layout.inner) > 1 else 1
    row_bytes = layout.chunk_bytes // rows
    files = getattr(arr.store_path.store, "files", {})
    for c in range(start // rows, -(-stop // rows)):
        a, b = max(start, c * rows), min(stop, (c + 1) * rows)
        shard, i = divmod(c, layout.per_shard[0])
        path = layout.path(shard)
        if not path.exists():
            key = path.relative_to(Path(arr.store_path.store.root)).as_posix()
            if key in files:
                raise StoreError(f"{arr.store_path.store.root}: array {arr.store_path.path}, chunk {path.name} "
                                 "is missing (the store is damaged; rerun the job that makes it)")
            out[a - start:b - start] = arr.metadata.fill_value
            continue
        index = _shard_index(layout, path)
        n_j = layout.per_shard[1] if len(layout.per_shard) > 1 else 1
        with open(path, "rb") as fh:
            for j in range(n_j):
                offset, nbytes = (int(v) for v in index[i * n_j + j])
                dest = out[a - start:b - start, j * units:(j + 1) * units] if out.ndim > 1 else out[a - start:b - start]
                if offset == _MISSING and nbytes == _MISSING:
                    dest[...] = arr.metadata.fill_value
                    continue
                if nbytes != layout.chunk_bytes:
                    raise StoreError(f"{path}: inner chunk {i * n_j + j} is {nbytes} bytes, {layout.chunk_bytes} "
                                     "expected (damaged; rerun the job that makes it)")
                fh.seek(offset + (a - c * rows) * row_bytes)
                whole = dest.ndim < 2 or dest.shape[1] == units
                buf = dest if whole and dest.flags.c_contiguous else np.empty((b - a,) + layout.inner[1:], arr.dtype)
                if fh.readinto(memoryview(buf).cast("B")) != buf.nbytes:
                    raise StoreError(f"{path}: inner chunk {i * n_j + j} is truncated (rerun the job that makes it)")
                if buf is not dest:
                    dest[...] = buf[:, :dest.shape[1]] if buf.ndim > 1 else buf
    return out


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
        self.layout = shard_layout(arr)
        self.root: Path | None = self.layout.root if self.layout else None
        if self.layout is None:
            return
        self.checksum = self.layout.checksum
        self.inner, self.shard, self.per_shard = self.layout.inner, self.layout.shard, self.layout.per_shard
        self.chunk_bytes = self.layout.chunk_bytes

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
        assert self.layout is not None
        return self.layout.path(shard)

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
