"""Every read-out layer of a trained model, for every image of a stimulus set, into chunked Zarr.

The store is a DataTree (one group per layer) whose ``activation`` is
(sample, unit, y, x) for maps and (sample, unit) for vectors, chunked along sample
and unit with chunks sized from a byte target; the stimulus set's coordinates along
``sample`` (every factor, the identity codes) are carried in every group. The
skeleton (metadata, coordinates) is written first; then each batch's activations are
written into their own, chunk-aligned sample range, so memory holds one batch,
whatever the set's size. The store is built at ``<out>.partial`` and renamed when
complete, so an interrupted extraction is never taken for a result.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
import zarr
from tqdm import tqdm

from ..nets import READOUT_LAYERS, build_model, network_input, readout_modules
from ..stimuli.store import open_stimuli
from ..store import atomic_store, open_group

log = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "float32": np.float32}
# Uncompressed activations: compression cost several times the forward pass (see benchmarks/extract.py).
ACTIVATION_ENCODING: dict[str, Any] = {"compressors": None, "chunk_key_encoding": {"name": "default", "separator": "."}}


class ExtractionError(ValueError):
    """The model and the stimulus set do not fit together, or the request is invalid."""


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is stored: its dims and shape per sample, pooling and chunks."""

    name: str
    dims: tuple[str, ...]  # ("unit", "y", "x") or ("unit",)
    shape: tuple[int, ...]
    pool: str  # "full", "grid" or "mean"
    grid: int
    chunks: tuple[int, ...]  # (sample, unit[, y, x]): a batch of samples, as many units as fit chunk_mb
    shards: tuple[int, ...] = ()  # whole batches of every unit: one file each (see ShardWriter)


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model saved by the training stage (eval mode) and its metadata."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        spec = saved["spec"]
        channels = saved["state_dict"]["conv1.weight"].shape[1]
        model = build_model(len(saved["classes"]), width=spec["width"], stem=spec["stem"], in_channels=channels)
        model.load_state_dict(saved["state_dict"])
    except (OSError, KeyError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ExtractionError(f"{path}: not a trained infodissect model ({exc})") from exc
    meta = {k: saved[k] for k in ("classes", "task", "spec", "architecture")}
    meta["in_channels"] = int(channels)
    return model.to(device).eval(), meta


def probe_shapes(model: torch.nn.Module, image_shape: tuple[int, int, int], layers: list[str],
                 device: str | torch.device = "cpu") -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of each read-out layer, from one forward pass of a blank image."""
    shapes: dict[str, tuple[int, ...]] = {}
    mods = readout_modules(model)
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
             for n in layers]
    with torch.inference_mode():
        model(torch.zeros((1, image_shape[2], image_shape[0], image_shape[1]), device=device))
    for h in hooks:
        h.remove()
    return shapes


SHARD_BYTES = 1 << 31  # the largest shard file (2 GiB); a shard holds whole batches of every unit


def plan_layers(shapes: dict[str, tuple[int, ...]], pooling: dict[str, Any], dtype: str, batch_size: int,
                chunk_mb: float, n: int = 0) -> list[LayerPlan]:
    """Stored form of each layer: ``pooling[layer]`` (or ``pooling['default']``) is ``full``,
    ``mean`` (global average, a vector) or an int g (average-pooled to a g x g grid).
    Chunks hold ``batch_size`` samples and as many units as fit in ``chunk_mb``; shards
    (the files) hold as many whole batches of all units as fit in :data:`SHARD_BYTES`,
    at most the ``n`` samples of the set."""
    plans = []
    item = np.dtype(DTYPES[dtype]).itemsize
    for name, shape in shapes.items():
        how = pooling.get(name, pooling.get("default", "full"))
        if len(shape) == 1:
            dims, out, pool, grid = ("unit",), shape, "full", 0
        elif how == "mean":
            dims, out, pool, grid = ("unit",), shape[:1], "mean", 0
        elif how == "full":
            dims, out, pool, grid = ("unit", "y", "x"), shape, "full", 0
        elif isinstance(how, int) and how >= 1:
            g = min(how, shape[1], shape[2])
            dims, out, pool, grid = ("unit", "y", "x"), (shape[0], g, g), "grid", g
        else:
            raise ExtractionError(f"pooling.{name}: {how!r} is not 'full', 'mean' or a grid size >= 1")
        per_unit = batch_size * int(np.prod(out[1:], dtype=np.int64)) * item
        units = max(1, min(out[0], int(chunk_mb * 2**20 // max(per_unit, 1))))
        unit_chunks = -(-out[0] // units)
        batches = max(1, min(-(-max(n, 1) // batch_size), SHARD_BYTES // (per_unit * units * unit_chunks)))
        plans.append(LayerPlan(name, dims, tuple(out), pool, grid, (batch_size, units) + tuple(out[1:]),
                               (batch_size * batches, units * unit_chunks) + tuple(out[1:])))
    return plans


def _pool(out: torch.Tensor, plan: LayerPlan) -> torch.Tensor:
    if plan.pool == "mean":
        return out.mean((2, 3))
    if plan.pool == "grid":
        return F.adaptive_avg_pool2d(out, plan.grid)
    return out


def _sample_coords(stim: xr.Dataset) -> dict[str, Any]:
    """Every coordinate and identity code of the stimulus set that lies along ``sample``."""
    coords: dict[str, Any] = {}
    for name, var in list(stim.coords.items()) + [(k, stim[k]) for k in ("shape_coeff", "texture_coeff")
                                                  if k in stim.data_vars]:
        if var.dims and var.dims[0] == "sample":
            values = var.values
            if values.dtype.kind in "UT":
                values = np.asarray([str(v) for v in values.tolist()], dtype=object)
            coords[str(name)] = (var.dims, values, dict(var.attrs))
    return coords


def skeleton(plans: list[LayerPlan], n: int, coords: dict[str, Any], dtype: str, attrs: dict[str, Any]
             ) -> xr.DataTree:
    """The store's DataTree with lazy (unwritten) activations.

    Every layer group carries the 1-D factor coordinates along ``sample`` (DataTree
    inherits only indexed coordinates); the root also holds the identity codes
    (``shape_coeff``, ``texture_coeff``).
    """
    import dask.array as da

    factors = {k: v for k, v in coords.items() if len(v[0]) == 1}
    nodes: dict[str, xr.Dataset] = {"/": xr.Dataset(coords=coords, attrs=attrs)}
    for p in plans:
        shape = (n,) + p.shape
        data = da.zeros(shape, dtype=DTYPES[dtype], chunks=tuple(min(c, s) for c, s in zip(p.shards, shape)))
        act = xr.DataArray(data, dims=("sample",) + p.dims,
                           attrs={"layer": p.name, "pooling": p.pool if p.pool != "grid" else f"grid {p.grid}",
                                  "units": "activation (a.u.)"})
        act.encoding = {**ACTIVATION_ENCODING, "chunks": p.chunks, "shards": p.shards}
        nodes[p.name] = xr.Dataset({"activation": act}, coords=factors, attrs={"layer": p.name, **attrs})
    return xr.DataTree.from_dict(nodes)


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


def sample_ranges(n: int, batch_size: int, processes: int) -> list[tuple[int, int]]:
    """Contiguous, batch-aligned (so chunk-aligned) sample ranges, one per process (empty ones dropped)."""
    batches = -(-n // batch_size)
    per = -(-batches // max(1, processes))
    return [(b * batch_size, min(n, (b + per) * batch_size)) for b in range(0, batches, per)]


def extract_range(model_path: str | Path, stimuli_path: str | Path, store: str | Path, plans: list[LayerPlan],
                  lo: int, hi: int, *, dtype: str, batch_size: int, device: str | torch.device, threads: int = 0,
                  progress: bool = True) -> None:
    """Forward images ``lo:hi`` and write their activations into the (skeleton) ``store``, batch by batch.

    One writer thread overlaps the chunk-aligned writes of batch k with the forward pass of
    batch k + 1. The hooks copy each layer's output (pooled, cast) into one of three
    preallocated batch buffers that the writer hands back once written, so memory is
    three batches, allocated once, whatever the set's size. Runs in the extracting
    process or in one of its worker processes (each its own sample range).
    """
    if threads:
        torch.set_num_threads(threads)
    model, _ = load_trained(model_path, device)
    image = open_group(stimuli_path, "stimulus store")["image"]
    group = zarr.open_group(str(store), mode="r+")
    arrays = {p.name: ShardWriter(group[p.name]["activation"]) for p in plans}
    free: queue.Queue = queue.Queue()
    for _ in range(3):  # page-aligned, so full chunks can bypass the page cache (see ShardWriter)
        free.put({p.name: torch.from_numpy(aligned_empty((batch_size,) + p.shape, DTYPES[dtype])) for p in plans})
    mods = readout_modules(model)
    current: dict[str, torch.Tensor] = {}

    def capture(plan: LayerPlan, output: torch.Tensor) -> None:  # returns None: the output stays as it is
        current[plan.name][:len(output)].copy_(_pool(output, plan))

    hooks = [mods[p.name].register_forward_hook(lambda m, i, o, p=p: capture(p, o)) for p in plans]
    pending: queue.Queue = queue.Queue()
    errors: list[BaseException] = []

    def writer() -> None:
        while (item := pending.get()) is not None:
            a, b, bufs = item
            try:
                if not errors:
                    for name, values in bufs.items():
                        arrays[name](a, values[:b - a].numpy())
            except BaseException as exc:  # re-raised in the calling thread
                errors.append(exc)
            free.put(bufs)

    thread = threading.Thread(target=writer, name="activation-writer", daemon=True)
    thread.start()
    try:
        for a in tqdm(range(lo, hi, batch_size), desc=f"extract {lo}:{hi}", unit="batch", disable=not progress,
                      mininterval=5):
            b = min(a + batch_size, hi)
            x = network_input(torch.from_numpy(np.ascontiguousarray(image[a:b])).to(device))
            current.update(free.get())  # blocks while the writer is two batches behind
            with torch.inference_mode():
                model(x)
            pending.put((a, b, dict(current)))
            if errors:
                break
    finally:
        pending.put(None)
        thread.join()
        for hk in hooks:
            hk.remove()
        for w in arrays.values():
            w.close()
    if errors:
        raise errors[0]


def _worker_device(device: str | torch.device, rank: int) -> str:
    """The device of worker ``rank``: one GPU each (round robin) when extracting on CUDA."""
    if str(device).startswith("cuda") and torch.cuda.device_count() > 1:
        return f"cuda:{rank % torch.cuda.device_count()}"
    return str(device)


def extract(model_path: str | Path, stimuli_path: str | Path, out: str | Path, layers: list[str] | None = None,
            pooling: dict[str, Any] | None = None, dtype: str = "float16", batch_size: int = 128,
            chunk_mb: float = 16.0, device: str | torch.device = "cpu", progress: bool = True,
            processes: int = 1, threads: int = 0) -> Path:
    """Extract the read-out layers of ``model_path`` on every image of ``stimuli_path`` into ``out``.

    With ``processes`` > 1, that many worker processes (one GPU each on a multi-GPU
    machine, else ``threads`` CPU threads each) write their own batch-aligned sample
    range of the same store, after this process has written its skeleton.
    """
    layers = list(layers or READOUT_LAYERS)
    unknown = sorted(set(layers) - set(READOUT_LAYERS))
    if unknown:
        raise ExtractionError(f"unknown layer(s) {unknown}; read-out layers are {list(READOUT_LAYERS)}")
    if dtype not in DTYPES:
        raise ExtractionError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    model, meta = load_trained(model_path, device)
    stim = open_stimuli(stimuli_path, require=("image",))
    n, h, w, c = stim["image"].shape
    if c != meta["in_channels"]:
        raise ExtractionError(f"{stimuli_path}: images have {c} channel(s), model {model_path} expects "
                              f"{meta['in_channels']}")
    plans = plan_layers(probe_shapes(model, (h, w, c), layers, device), pooling or {}, dtype, batch_size, chunk_mb, n)
    attrs = {"model": str(Path(model_path).parent.name), "model_path": str(model_path), "set": stim.attrs.get("set", ""),
             "stimuli": str(stimuli_path), "task": meta["task"], "classes": json.dumps(meta["classes"]),
             "dtype": dtype, "architecture": meta["architecture"]}
    del model
    kwargs = dict(dtype=dtype, batch_size=batch_size, progress=progress)
    with atomic_store(out, inputs=[model_path, stimuli_path]) as tmp:
        write_skeleton(skeleton(plans, n, _sample_coords(stim), dtype, attrs), tmp)
        ranges = sample_ranges(n, batch_size, processes)
        if len(ranges) == 1:
            extract_range(model_path, stimuli_path, tmp, plans, 0, n, device=device, threads=threads, **kwargs)
        else:
            _run_workers(model_path, stimuli_path, tmp, plans, ranges, device, threads, kwargs)
    log.info("extracted %d layers x %d images with %d process(es) -> %s", len(plans), n, max(1, processes), out)
    return Path(out)


def _run_workers(model_path: str | Path, stimuli_path: str | Path, store: Path, plans: list[LayerPlan],
                 ranges: list[tuple[int, int]], device: str | torch.device, threads: int, kwargs: dict) -> None:
    """One spawned process per sample range; raises if any fails (the store then stays unfinished)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=extract_range, name=f"extract-{rank}",
                         args=(model_path, stimuli_path, store, plans, lo, hi),
                         kwargs=dict(device=_worker_device(device, rank), threads=threads, **kwargs))
             for rank, (lo, hi) in enumerate(ranges)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if failed:
        raise ExtractionError(f"extraction worker(s) failed: {failed} (see the log above)")


def describe(path: str | Path) -> str:
    """A table of the layers of an activation store: shape, dtype, chunks and size."""
    root = open_group(path, "activation store")
    lines = [f"{path}: model {root.attrs.get('model')}, set {root.attrs.get('set')}, dtype {root.attrs.get('dtype')}"]
    total = 0
    lines.append(f"{'layer':<14} {'dims':<28} {'shape':<24} {'chunks':<24} {'MB':>8}")
    for name in READOUT_LAYERS:
        if name not in root:
            continue
        arr = root[name]["activation"]
        dims = arr.metadata.dimension_names or ()
        size = math.prod(arr.shape) * arr.dtype.itemsize
        total += size
        lines.append(f"{name:<14} {'(' + ', '.join(dims) + ')':<28} {str(arr.shape):<24} {str(arr.chunks):<24} "
                     f"{size / 2**20:>8.1f}")
    lines.append(f"total {total / 2**20:.1f} MB (uncompressed)")
    return "\n".join(lines)


@dataclass(frozen=True)
class Spec:
    """Settings of the activation stage (config ``activations``)."""

    layers: list[str]
    pooling: dict
    dtype: str
    batch_size: int
    chunk_mb: float
    device: str
    processes: int


def run(spec: Spec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """Extract every read-out layer of ``inputs["model"]`` on ``inputs["stimuli"]`` into ``outputs["out"]``,
    the command's CPU threads shared among ``spec.processes`` worker processes."""
    from ..threads import resolve_device

    device = str(resolve_device(spec.device, "activations.device"))
    extract(inputs["model"], inputs["stimuli"], outputs["out"], layers=spec.layers, pooling=spec.pooling,
            dtype=spec.dtype, batch_size=spec.batch_size, chunk_mb=float(spec.chunk_mb), device=device,
            processes=spec.processes, threads=max(1, torch.get_num_threads() // spec.processes))
    return {}
