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
from .shards import ShardWriter, aligned_empty, write_skeleton

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
    """Every coordinate of the stimulus set that lies along ``sample``, and its identity codes: the identity
    table (``identity_shape``, ``identity_texture`` along ``person``) and the rows' own codes where the set
    has them (:func:`infodissect.stimuli.design.sample_codes` reads them from the store's root)."""
    from ..stimuli.design import ROW_CODES, TABLE_CODES

    coords: dict[str, Any] = {}
    codes = [(k, stim[k]) for k in (*ROW_CODES, *TABLE_CODES) if k in stim.data_vars]
    for name, var in list(stim.coords.items()) + codes:
        if var.dims and var.dims[0] in ("sample", "person"):
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
    (the identity table, and the rows' own codes where the set has them).
    """
    import dask.array as da

    factors = {k: v for k, v in coords.items() if tuple(v[0]) == ("sample",)}
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
    print(describe(outputs["out"]), flush=True)  # the store's table, in the job's log
    return {}
