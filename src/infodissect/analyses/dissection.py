"""Network Dissection (Bau et al. 2017; Zhou et al., TPAMI 2018) against the renderer's exact part maps.

Each unit k of a layer with maps (sample, unit, y, x) is labelled by the concept its
top-quantile activation region overlaps best:

1. **Threshold.** ``T_k`` is the top quantile of unit k over every position of every
   image: the smallest activation value with ``count(a_k > T_k) <= floor(q * n)``, ``n``
   the unit's number of values (``q = 0.005`` by default, as NetDissect-Lite). Exact and
   streamed (:class:`UnitQuantiles`): a histogram of the values' ordered bit patterns per
   unit, one pass for float16 stores, two (a 16-bit radix select) for float32, memory
   ``units x 65536`` counts whatever the set's size.
2. **Upsampling at receptive-field centres.** Cell ``i`` of a layer sits at the centre of
   its receptive field, image pixel ``offset + stride * i`` (:func:`layer_geometry`, from
   the network's convolutions and pools); the map is interpolated bilinearly between
   those centres and held at its edge values beyond them (:func:`upsample`).
   NetDissect-Lite instead resizes the map as an image (cell ``i`` at pixel
   ``(i + 0.5) * H / h - 0.5``, the centre of the block it would cover); for this ResNet's
   padding the true centres lie up to ``stride / 2 - 0.5`` pixels up and left of that
   (15.5 pixels for a 2 x 2 map of a 64-pixel image), which is what this stage uses.
3. **IoU.** The unit's mask ``U_k > T_k`` against every concept mask, counted over the
   whole set: ``IoU = sum |M & C| / sum |M | C|``. Only the interpolation squares
   touching a cell above ``T_k`` can hold a pixel above it (an interpolated value is a
   convex combination of its four corners), so :func:`count_batch` evaluates only those:
   exact, and ``~4 q`` of the work of upsampling every map.
4. **Labels.** A unit's label is its best concept; it is a detector when that IoU is above
   ``iou_threshold`` (0.04).

Concepts (:func:`concept_table`) are the store's part labels, unions of them (config),
and image-level concepts from categorical factors (every pixel of an image whose factor
has that level, as NetDissect's scene concepts). A mask covering exactly a share ``q`` of
the pixels reaches at most IoU ``min(q, p) / max(q, p)`` on a concept of pixel share ``p``
(``ceiling``): large concepts (skin, background, an image-level concept) stay far below the
detector threshold at small ``q``, which the stage reports rather than hides. It is a guide,
not a bound: an upsampled mask covers more pixels than ``q`` of the image (at coarse layers
several times ``q``), and its measured size is in ``mask_area``.

Baselines (as in the paper): the pixels themselves (each colour channel as a unit), the
representation under random rotations ``Q^alpha`` of a layer's unit space
(:func:`rotation`), an untrained network of the same architecture, and for each concept
a location-only unit whose map is the concept's mean mask over the set
(``location_iou``): a detector worth the name beats where the part usually is.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import xarray as xr

log = logging.getLogger(__name__)

PIXELS = "pixels"  # the input baseline's layer name (its units are the colour channels)
BINS = 1 << 16


class DissectionError(ValueError):
    """A dissection input or setting that cannot give a meaningful result."""


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Where a layer's cells sit in the image: cell ``i`` at pixel ``offset + stride * i`` (pixel centres at
    integers); ``size`` is the receptive field's width in pixels."""

    stride: int
    offset: int
    size: int


def _compose(g: Geometry, kernel: int, stride: int, padding: int) -> Geometry:
    """The geometry after one convolution or pool (square ``kernel``, ``stride``, ``padding``)."""
    offset = g.offset + g.stride * ((kernel - 1) / 2 - padding)
    if offset != int(offset):
        raise DissectionError(f"a {kernel}x{kernel} kernel with padding {padding} puts receptive-field centres "
                              "between pixels; only odd kernels with integer centres are supported")
    return Geometry(g.stride * stride, int(offset), g.size + (kernel - 1) * g.stride)


def _ksp(module: torch.nn.Module) -> tuple[int, int, int]:
    def one(v: Any) -> int:
        return int(v[0] if isinstance(v, tuple) else v)
    return one(module.kernel_size), one(module.stride), one(module.padding)


def layer_geometry(model: torch.nn.Module) -> dict[str, Geometry]:
    """Receptive-field stride, centre offset and size of every map read-out layer of a ResNet-10
    (:mod:`infodissect.nets`), along its main path (the 1x1 shortcuts share its centres)."""
    chain: list[Any] = [model.conv1, "relu_stem", model.maxpool]
    for k in range(1, 5):
        block = getattr(model, f"block{k}")
        chain += [block.conv1, f"block{k}_relu1", block.conv2, f"block{k}_out"]
    g, out = Geometry(1, 0, 1), {}
    for item in chain:
        if isinstance(item, str):
            out[item] = g
        else:
            g = _compose(g, *_ksp(item))
    return out


def interpolation_matrix(n_pixels: int, n_cells: int, g: Geometry) -> np.ndarray:
    """(pixels, cells) linear interpolation between cell centres ``g.offset + g.stride * i``, clamped
    (edge values held) beyond the first and last centre."""
    centres = g.offset + g.stride * np.arange(n_cells, dtype=np.float64)
    eye = np.eye(n_cells)
    return np.stack([np.interp(np.arange(n_pixels, dtype=np.float64), centres, eye[i]) for i in range(n_cells)], 1)


def upsample(maps: np.ndarray, size: tuple[int, int], g: Geometry) -> np.ndarray:
    """Maps (..., h, w) upsampled to the image (..., H, W) at the receptive-field centres (dense, float64:
    the reference :func:`count_batch` is tested against, and the figures' masks)."""
    ry = interpolation_matrix(size[0], maps.shape[-2], g)
    rx = interpolation_matrix(size[1], maps.shape[-1], g)
    return np.einsum("Yy,...yx,Xx->...YX", ry, np.asarray(maps, dtype=np.float64), rx)


# --------------------------------------------------------------------------- exact streaming quantiles


def _value16(key: torch.Tensor) -> torch.Tensor:
    """The float16 value of an ordered key (:func:`.dissection_kernels.histogram16`), as float32."""
    u = torch.where(key >= 0x8000, key & 0x7FFF, 0xFFFF - key)
    return torch.where(u >= 0x8000, u - 0x10000, u).to(torch.int16).view(torch.float16).float()


def _value32(key: torch.Tensor) -> torch.Tensor:
    """The float32 value of an ordered 32-bit key (:func:`.dissection_kernels.histogram32`)."""
    u = torch.where(key >= 0x80000000, key & 0x7FFFFFFF, 0xFFFFFFFF - key)
    return torch.where(u >= 0x80000000, u - 0x100000000, u).to(torch.int32).view(torch.float32)


def _zeros(*shape: int) -> torch.Tensor:
    """int64 zeros in anonymous memory, in 4 KiB pages zeroed by the OS on first touch (no huge pages, which
    NumPy asks for on large arrays): a count table of ``units x 65536`` bins costs only the pages its values
    fall in (about a fifth of it on the demo)."""
    import mmap

    nbytes = max(8, int(np.prod(shape)) * 8)
    buf = mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.from_numpy(np.frombuffer(buf, np.int64, int(np.prod(shape))).reshape(shape))


def top_rank(q: float, n: int) -> int:
    """How many of ``n`` values may lie above a unit's threshold at top quantile ``q``: ``floor(q * n)``."""
    return int(math.floor(q * n))


def _kth_from_top(counts: torch.Tensor, m: torch.Tensor, with_above: bool = False) -> Any:
    """Per row of ``counts`` (..., bins), the bin holding the value with ``m`` values above it (-1: none), and
    with ``with_above`` also the number of values in higher bins."""
    from .dissection_kernels import LOCK, kth_from_top

    rows = counts.reshape(-1, counts.shape[-1]).contiguous().numpy()
    bins, above = np.empty(len(rows), np.int64), np.empty(len(rows), np.int64)
    with LOCK:
        kth_from_top(rows, np.ascontiguousarray(m.expand(counts.shape[:-1]).reshape(-1).numpy()), bins, above)
    bins_t = torch.from_numpy(bins).view(counts.shape[:-1])
    return (bins_t, torch.from_numpy(above).view(counts.shape[:-1])) if with_above else bins_t


class UnitQuantiles:
    """Exact top-quantile thresholds of every unit, streamed: feed every batch (any order, any split)
    to :meth:`add` for each pass until :meth:`next_pass` says done, then read :meth:`thresholds`.

    float16 values take one pass (a histogram of all 65536 bit patterns per unit); float32
    values take two (the high 16 bits, then the low 16 bits inside the bucket that holds
    each threshold). Memory: ``units x 65536`` (x quantiles in the second pass) counts.
    """

    def __init__(self, units: int, quantiles: Iterable[float], dtype: torch.dtype, total: int = 0) -> None:
        if dtype not in (torch.float16, torch.float32):
            raise DissectionError(f"activations of dtype {dtype} (float16 or float32 only)")
        self.units, self.quantiles, self.dtype = units, list(quantiles), dtype
        self.passes = 1 if dtype == torch.float16 else 2
        self.pass_ = 1
        self.n = 0
        self.counts = _zeros(units * BINS)  # pages never counted in are never touched
        self.bucket: torch.Tensor | None = None  # (Q, K) high bits of each threshold (float32, second pass)
        self.rest: torch.Tensor | None = None  # (Q, K) values still to pass inside that bucket
        self.inside: torch.Tensor | None = None  # (Q, K) values in that bucket (what the second pass must see)
        self._lock = threading.Lock()
        # float16 with a known ``total`` (values per unit over the whole set): a running lower bound of every
        # threshold (the (m + 1)-th largest value seen so far, m = floor(max(q) * total), is at most the
        # final one), from a coarse 256-bin histogram; values below it are counted in no bin.
        self.total = total
        self.coarse = torch.zeros(units * 256, dtype=torch.int64)
        self.floor = torch.zeros(units, dtype=torch.int64)  # keys below it are counted in no fine bin

    def add(self, values: torch.Tensor) -> torch.Tensor:
        """Count one batch (B, K, ...) of the current pass (from any thread; integer counts, so the totals do
        not depend on how the set is split or in which order the batches come). Returns each map's largest
        value (B, K) float32, NaN where the map holds a NaN (not checked here)."""
        if values.dtype != self.dtype:
            raise DissectionError(f"a batch of dtype {values.dtype} for quantiles of {self.dtype}")
        k = values.shape[1]
        per_unit = values.numel() // max(k, 1)
        if self.dtype == torch.float16:
            from .dissection_kernels import LOCK, histogram16

            bits = values.contiguous().view(torch.int16).reshape(values.shape[0], k, -1).numpy()
            peak = np.empty((values.shape[0], k), np.int64)
            with self._lock, LOCK:  # the kernel is parallel over units; batches take turns
                histogram16(bits, self.floor.numpy(), self.counts.view(k, BINS).numpy(),
                             self.coarse.view(k, 256).numpy(), peak)
                self.n += per_unit
                if self.total:
                    m = torch.full((k,), top_rank(max(self.quantiles), self.total), dtype=torch.int64)
                    j = _kth_from_top(self.coarse.view(k, 256), m)
                    self.floor = torch.maximum(self.floor, torch.where(j >= 0, j << 8, 0))
            keys = torch.from_numpy(peak)
            return torch.where(keys >= 0, _value16(keys.clamp(min=0)), torch.nan)
        from .dissection_kernels import LOCK, histogram32

        bits = values.contiguous().view(torch.int32).reshape(values.shape[0], k, -1).numpy()
        with self._lock, LOCK:
            if self.pass_ == 1:
                histogram32(bits, np.zeros((0, k), np.int64), self.counts.view(1, k, BINS).numpy())
                self.n += per_unit
            else:
                assert self.bucket is not None
                histogram32(bits, self.bucket.numpy(), self.counts.view(len(self.quantiles), k, BINS).numpy())
        return values.reshape(values.shape[0], k, -1).amax(-1).float()

    def _m(self) -> torch.Tensor:
        return torch.tensor([[top_rank(q, self.n)] for q in self.quantiles], dtype=torch.int64).expand(
            len(self.quantiles), self.units)

    def next_pass(self) -> bool:
        """End the current pass; ``True`` when another pass over the data is needed."""
        if self.n == 0:
            raise DissectionError("no values to take quantiles of")
        if self.pass_ < self.passes:
            counts = self.counts.view(self.units, BINS)
            m = self._m()
            found = [_kth_from_top(counts, m[qi], with_above=True) for qi in range(len(self.quantiles))]
            self.bucket = torch.stack([b for b, _ in found])
            self.inside = torch.gather(counts.unsqueeze(0).expand(len(self.quantiles), -1, -1), 2,
                                       self.bucket.unsqueeze(-1)).squeeze(-1)
            self.rest = m - torch.stack([a for _, a in found])  # values still to pass inside the bucket
            self.counts = _zeros(len(self.quantiles), self.units * BINS)
            self.pass_ += 1
            return True
        return False

    def thresholds(self) -> torch.Tensor:
        """(quantile, unit) float32 thresholds (after the last pass). Raises :class:`DissectionError` when the
        passes did not see the same data (the set's size, or the second pass's values, differ)."""
        if self.total and self.n != self.total:
            raise DissectionError(f"thresholds from {self.n} values per unit, {self.total} expected")
        if self.dtype == torch.float16:
            counts = self.counts.view(self.units, BINS)
            m = self._m()
            keys = torch.stack([_kth_from_top(counts, m[qi]) for qi in range(len(self.quantiles))])
            if (keys < 0).any():
                raise DissectionError("no threshold found: the histogram holds fewer values than counted")
            return _value16(keys)
        assert self.bucket is not None and self.rest is not None and self.inside is not None
        counts = self.counts.view(len(self.quantiles), self.units, BINS)
        if not torch.equal(counts.sum(-1), self.inside):
            raise DissectionError("the second pass over the maps did not give the values of the first (the maps "
                                  "must be computed the same way in every pass)")
        low = _kth_from_top(counts, self.rest)
        return _value32((self.bucket << 16) | low)


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True)
class Quads:
    """The interpolation squares of a layer's upsampled map, per axis (y, x): square ``j`` lies between the
    centres of cells ``clamp(j - before)`` and ``clamp(j + 1 - before)`` (edge values held beyond the first
    and last centre) and covers pixels ``offset + stride * (j - before) + 0 .. stride - 1``."""

    before: tuple[int, int]
    squares: tuple[int, int]
    stride: int
    offset: int


def quads(g: Geometry, cells: tuple[int, int], size: tuple[int, int]) -> Quads:
    """The :class:`Quads` of a (h, w) map at geometry ``g`` in an image of ``size`` (H, W)."""
    s, o = g.stride, g.offset
    before = [max(1, -(-o // s)) for _ in cells]  # the first square starts at or before pixel 0
    after = [max(1, -(-(n_pix - o) // s) - n + 1) for n, n_pix in zip(cells, size)]  # the last ends at or after
    squares = [b + n + a - 1 for b, n, a in zip(before, cells, after)]
    return Quads((before[0], before[1]), (squares[0], squares[1]), s, o)


_KEY_VALUES = _value16(torch.arange(1 << 16)).double().numpy()  # the float16 value of each ordered key
_KEYS = np.flatnonzero(~np.isnan(_KEY_VALUES))  # ascending keys, ascending values (NaN keys left out)


def key_limits(thresholds: np.ndarray) -> np.ndarray:
    """Per threshold, the largest ordered float16 key whose value is at most it (-1: none): a float16 value is
    above the threshold exactly when its key is above the limit (NaN aside)."""
    i = np.searchsorted(_KEY_VALUES[_KEYS], thresholds, side="right") - 1
    return np.where(i >= 0, _KEYS[np.maximum(i, 0)], -1).astype(np.int64)


def count_batch(maps: torch.Tensor, thresholds: torch.Tensor, q: Quads, labels: torch.Tensor, n_labels: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per quantile, pixel counts of each unit's upsampled mask ``U > T`` by part label, and its area per image.

    Only the squares with a corner above ``T`` can hold such a pixel (an interpolated value is a convex
    combination of its corners), so only those are evaluated (:func:`.dissection_kernels.mask_counts`):
    the work follows the cells above the threshold, not the image size.

    Parameters
    ----------
    maps
        (B, K, h, w) activations.
    thresholds
        (Q, K) thresholds.
    q
        The layer's :class:`Quads`.
    labels
        (B, H, W) int64 part labels of the images.
    n_labels
        Number of part labels.

    Returns
    -------
    intersection, area
        (Q, K, n_labels) and (Q, B, K) int64 pixel counts.
    """
    from .dissection_kernels import LOCK, mask_counts

    b, k = maps.shape[:2]
    half = maps.dtype == torch.float16  # read as bit patterns, compared by ordered key
    x = (maps.contiguous().view(torch.int16) if half else maps.float().contiguous()).numpy()
    lab = labels.contiguous().numpy()
    inter = np.zeros((len(thresholds), k, n_labels), np.int64)
    area = np.zeros((len(thresholds), b, k), np.int64)
    for qi, t in enumerate(thresholds):
        t64 = t.double().numpy()
        limits = key_limits(t64) if half else np.zeros(k, np.int64)
        with LOCK:
            mask_counts(x, t64, limits, lab, q.stride, q.offset, q.before[0], q.before[1], q.squares[0],
                        q.squares[1], inter[qi], area[qi])
    return torch.from_numpy(inter), torch.from_numpy(area)


# --------------------------------------------------------------------------- concepts


@dataclass(frozen=True)
class Concepts:
    """The concepts of a dissection: names, kinds, the part labels each pixel concept unites
    (``parts``: (labels, pixel concepts) 0/1) and the (factor, level) of each image concept."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]  # "part", "union" or "image"
    members: tuple[str, ...]  # "+"-joined parts, or "factor=level"
    parts: np.ndarray  # (n_labels, n_pixel_concepts) int64
    image_levels: tuple[tuple[str, str], ...]

    @property
    def n_pixel(self) -> int:
        return self.parts.shape[1]


def concept_table(part_names: list[str], unions: dict[str, list[str]], image_factors: list[str],
                  levels: dict[str, list[str]]) -> Concepts:
    """The concepts: every part label, each union of ``unions`` (name -> part labels) and, for each factor of
    ``image_factors``, one image concept per level present (``levels``: factor -> levels in the set).

    Raises :class:`DissectionError` naming a union's unknown part, a clash of names, or a factor without levels.
    """
    names, kinds, members = list(part_names), ["part"] * len(part_names), list(part_names)
    columns = [np.eye(len(part_names), dtype=np.int64)[:, i] for i in range(len(part_names))]
    for name, parts in unions.items():
        unknown = [p for p in parts if p not in part_names]
        if unknown:
            raise DissectionError(f"dissection.concepts.{name}: unknown part(s) {unknown} (parts: {part_names})")
        if name in names or not parts:
            raise DissectionError(f"dissection.concepts.{name}: " + ("names a part label already" if parts else
                                                                      "unites no part"))
        names.append(name), kinds.append("union"), members.append("+".join(parts))
        columns.append(np.isin(np.asarray(part_names), parts).astype(np.int64))
    image: list[tuple[str, str]] = []
    for factor in image_factors:
        if factor not in levels:
            raise DissectionError(f"dissection.image_factors: {factor!r} is not a categorical factor that varies in "
                                  f"the set (those: {sorted(levels)})")
        for level in levels[factor]:
            names.append(f"{factor}={level}"), kinds.append("image"), members.append(f"{factor}={level}")
            image.append((factor, str(level)))
    return Concepts(tuple(names), tuple(kinds), tuple(members), np.stack(columns, 1), tuple(image))


# --------------------------------------------------------------------------- one network's dissection


@dataclass
class LayerCounts:
    """Running totals of one layer over the set."""

    thresholds: torch.Tensor  # (Q, K)
    labels: torch.Tensor  # (Q, K, n_labels) intersections with each part label
    image: torch.Tensor  # (Q, K, n_image_concepts) intersections with each image concept
    area: torch.Tensor  # (Q, K) mask pixels
    top_value: torch.Tensor  # (top, K) largest activation of the unit in an image
    top_sample: torch.Tensor  # (top, K) that image's sample index


Batches = Callable[[], Iterator[tuple[int, dict[str, torch.Tensor]]]]  # (first sample, {layer: maps})


def _prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items``, produced by a thread up to ``depth`` ahead (reading the next batch while this one is counted)."""
    import queue

    q: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, name="dissection-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)


_SAMPLE = (1 << 31) - 1  # sample indices below 2**31, packed under a 32-bit ordered value


def _merge_top(value: torch.Tensor, sample: torch.Tensor, new_value: torch.Tensor, new_sample: torch.Tensor,
               top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` largest (value, then smallest sample) per unit of two candidate lists (rows: candidates),
    as one ``topk`` of int64 keys: the value's order-preserving 32-bit key above the inverted sample."""
    v = torch.cat([value, new_value]).float() + 0.0  # -0.0 -> 0.0: equal values tie on the sample
    bits = v.view(torch.int32).long() & 0xFFFFFFFF
    ordered = torch.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits | 0x80000000)
    packed = (ordered << 31) | (_SAMPLE - torch.cat([sample, new_sample]).long())
    best = torch.topk(packed.T, min(top, len(packed)), dim=1).values.T
    return _value32(best >> 31), _SAMPLE - (best & _SAMPLE)


def dissect_network(batches: Batches, geometry: dict[str, Geometry], size: tuple[int, int],
                    parts: Callable[[int, int], torch.Tensor], image_onehot: Callable[[int, int], torch.Tensor],
                    quantiles: list[float], dtype: torch.dtype, n_labels: int, n_samples: int, top: int = 4,
                    workers: int = 1, desc: str = "dissect") -> dict[str, LayerCounts]:
    """Stream a network's maps twice (thresholds, then counts) and total every layer's :class:`LayerCounts`.

    Parameters
    ----------
    batches
        Called once per pass; yields (first sample index, {layer: (B, K, h, w) maps of ``dtype``}).
    geometry
        Each layer's :class:`Geometry`.
    size
        Image (H, W).
    parts, image_onehot
        ``(a, b) ->`` the part labels (B, H, W) int64, and the image concepts' membership (B, C) float64, of
        samples ``a:b``.
    n_samples
        Images in the set (every batch together).
    workers
        Batches processed at once (threads); totals are integer sums, identical for any number.
    """
    from tqdm.auto import tqdm

    from ..threads import match_numba_threads

    match_numba_threads()
    pool = ThreadPoolExecutor(workers, initializer=match_numba_threads) if workers > 1 else None

    def each(fn: Callable[[int, dict[str, torch.Tensor]], None], label: str) -> None:
        source = _prefetch(batches())
        items = tqdm(source, desc=f"{desc}: {label}", unit="batch", mininterval=5)
        pending: list[Any] = []
        try:
            for a, maps in items:
                if pool is None:
                    fn(a, maps)
                    continue
                pending.append(pool.submit(fn, a, maps))
                if len(pending) >= 2 * workers:
                    pending.pop(0).result()
            for f in pending:
                f.result()
        except BaseException:
            for f in pending:  # an error stops the batches still queued
                f.cancel()
            raise
        finally:
            items.close()
            source.close()

    quant: dict[str, UnitQuantiles] = {}
    tops: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    lock = threading.Lock()

    def pass_quantiles(a: int, maps: dict[str, torch.Tensor]) -> None:
        for layer, x in maps.items():
            if layer not in quant:
                with lock:
                    quant.setdefault(layer, UnitQuantiles(x.shape[1], quantiles, dtype,
                                                          total=n_samples * x.shape[2] * x.shape[3]))
            uq = quant[layer]
            peak = uq.add(x)
            if uq.pass_ == 1:
                if torch.isnan(peak).any():
                    raise DissectionError(f"{desc}: layer {layer} holds NaN (samples {a}..{a + len(x) - 1})")
                sample = torch.arange(a, a + len(x)).unsqueeze(1).expand_as(peak)
                with lock:
                    old = tops.get(layer, (peak[:0], sample[:0]))
                    tops[layer] = _merge_top(*old, peak, sample, top)

    try:
        more = True
        while more:
            each(pass_quantiles, "thresholds")
            more = any([uq.next_pass() for uq in quant.values()])
        thresholds = {layer: uq.thresholds() for layer, uq in quant.items()}
        grids = {}
        totals: dict[str, list[torch.Tensor]] = {}

        def pass_counts(a: int, maps: dict[str, torch.Tensor]) -> None:
            labels = parts(a, a + len(next(iter(maps.values()))))
            onehot = image_onehot(a, a + len(labels))
            for layer, x in maps.items():
                if layer not in grids:
                    grids[layer] = quads(geometry[layer], tuple(x.shape[2:]), size)  # type: ignore[arg-type]
                inter, area = count_batch(x, thresholds[layer], grids[layer], labels, n_labels)
                img = torch.einsum("qbk,bc->qkc", area.double(), onehot).round().long()
                with lock:
                    if layer not in totals:
                        totals[layer] = [inter, img, area.sum(1)]
                    else:
                        for t, v in zip(totals[layer], (inter, img, area.sum(1))):
                            t += v

        each(pass_counts, "IoU")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return {layer: LayerCounts(thresholds[layer], *totals[layer], *tops[layer]) for layer in thresholds}


# --------------------------------------------------------------------------- results


def concept_areas(label_counts: np.ndarray, image_counts: np.ndarray, pixels_per_image: int, concepts: Concepts
                  ) -> np.ndarray:
    """Pixels of each concept over the set, from the part-label pixel counts and the images per image concept."""
    return np.concatenate([label_counts @ concepts.parts, image_counts * pixels_per_image]).astype(np.int64)


def layer_result(layer: str, counts: LayerCounts, concepts: Concepts, areas: np.ndarray, quantiles: list[float],
                 units: np.ndarray, iou_threshold: float, g: Geometry, cells: tuple[int, int]) -> xr.Dataset:
    """One layer's labelled result: ``iou`` (quantile, unit, concept), thresholds, labels and areas."""
    inter = np.concatenate([counts.labels.numpy() @ concepts.parts, counts.image.numpy()], axis=2)
    area = counts.area.numpy()
    union = area[:, :, None] + areas[None, None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    best = iou.argmax(-1)
    best_iou = np.take_along_axis(iou, best[..., None], -1)[..., 0]
    names = np.asarray(concepts.names, dtype=object)
    ds = xr.Dataset(
        {
            "iou": (("quantile", "unit", "concept"), iou),
            "intersection": (("quantile", "unit", "concept"), inter.astype(np.int64)),
            "mask_area": (("quantile", "unit"), area.astype(np.int64)),
            "threshold": (("quantile", "unit"), counts.thresholds.numpy().astype(np.float32)),
            "label": (("quantile", "unit"), names[best]),
            "label_iou": (("quantile", "unit"), best_iou),
            "detector": (("quantile", "unit"), best_iou > iou_threshold),
            "top_sample": (("rank", "unit"), counts.top_sample.numpy().astype(np.int64)),
            "top_value": (("rank", "unit"), counts.top_value.numpy().astype(np.float32)),
        },
        coords={"quantile": np.asarray(quantiles, dtype=np.float64), "unit": units,
                "concept": names, "rank": np.arange(counts.top_sample.shape[0])},
        attrs={"layer": layer, "rf_stride": g.stride, "rf_offset": g.offset, "rf_size": g.size,
               "map_height": cells[0], "map_width": cells[1], "iou_threshold": iou_threshold},
    )
    ds["iou"].attrs.update(units="IoU", description="sum over images of |mask & concept| / |mask | concept|")
    ds["threshold"].attrs["description"] = "smallest value with count(activation > threshold) <= floor(q n)"
    ds["mask_area"].attrs.update(units="pixels", description="pixels of the upsampled map above the threshold")
    ds["label"].attrs["description"] = "the concept of largest IoU"
    ds["detector"].attrs["description"] = f"label_iou > {iou_threshold}"
    ds["top_sample"].attrs["description"] = "samples of the unit's largest activations (any position), descending"
    return ds


def summary(layers: dict[str, xr.Dataset], concepts: Concepts) -> xr.Dataset:
    """Per layer and quantile: ``detectors``, ``unique_concepts``, ``units`` and ``detectors_by_concept``."""
    names = list(layers)
    by_concept = np.stack([
        np.stack([[int(((ds["label"].values[qi] == c) & ds["detector"].values[qi]).sum()) for c in concepts.names]
                  for qi in range(ds.sizes["quantile"])]) for ds in layers.values()])
    q = next(iter(layers.values()))["quantile"].values
    out = xr.Dataset(
        {
            "detectors": (("layer", "quantile"), by_concept.sum(-1)),
            "unique_concepts": (("layer", "quantile"), (by_concept > 0).sum(-1)),
            "units": ("layer", np.asarray([ds.sizes["unit"] for ds in layers.values()])),
            "detectors_by_concept": (("layer", "quantile", "concept"), by_concept),
            "mean_label_iou": (("layer", "quantile"), np.stack([ds["label_iou"].mean("unit").values
                                                                  for ds in layers.values()])),
            "best_iou": (("layer", "quantile", "concept"), np.stack([ds["iou"].max("unit").values
                                                                      for ds in layers.values()])),
        },
        coords={"layer": np.asarray(names, dtype=object), "quantile": q,
                "concept": np.asarray(concepts.names, dtype=object)},
    )
    out["detectors"].attrs["description"] = "units whose best IoU passes the threshold"
    out["unique_concepts"].attrs["description"] = "concepts that label at least one detector"
    out["best_iou"].attrs["description"] = "largest IoU of any unit of the layer with the concept"
    return out


# --------------------------------------------------------------------------- baselines


def random_rotation(n: int, seed: int) -> np.ndarray:
    """A random rotation of R^n (QR of a Gaussian matrix, signs fixed so it is uniform; det +1)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotation(full: np.ndarray, alpha: float) -> np.ndarray:
    """The fractional rotation ``full ** alpha`` (``expm(alpha logm(full))``): identity at 0, ``full`` at 1."""
    if alpha == 0:
        return np.eye(len(full))
    if alpha == 1:
        return full
    from scipy.linalg import expm, logm

    gen = np.real(logm(full))
    gen = (gen - gen.T) / 2  # the logarithm of a rotation is skew-symmetric
    return expm(alpha * gen)


def rotation_layer(results: dict[str, xr.Dataset], layers: list[str]) -> str:
    """The layer to rotate when ``rotation_layer: auto``: the one with the most detectors (first quantile),
    the deepest of equals (the last layer when none has any)."""
    counts = [int(results[name]["detector"].values[0].sum()) for name in layers]
    return layers[max(range(len(layers)), key=lambda i: (counts[i], i))]


def location_iou(label_pixel_counts: np.ndarray, n_images: int, concepts: Concepts, quantiles: list[float]
                 ) -> np.ndarray:
    """(quantile, concept) IoU of the location-only unit of each pixel concept: its map is the concept's
    frequency at each pixel over the set (the same map in every image), thresholded at the top quantile
    like a unit; image concepts (no location) get NaN.

    ``label_pixel_counts`` is (n_labels, H*W): images in which each pixel has each part label.
    """
    freq = concepts.parts.T @ label_pixel_counts  # (pixel concepts, H*W) images with the concept there
    out = np.full((len(quantiles), len(concepts.names)), np.nan)
    for qi, q in enumerate(quantiles):
        for c in range(concepts.n_pixel):
            v = np.sort(freq[c])[::-1]
            t = v[top_rank(q, len(v))]
            mask = freq[c] > t
            inter = float(freq[c][mask].sum())
            union = n_images * float(mask.sum()) + float(freq[c].sum()) - inter
            out[qi, c] = inter / union if union > 0 else 0.0
    return out


@dataclass(frozen=True)
class Example:
    """A unit's best images for the figures: the images (n, H, W, C) uint8 and its masks there (n, H, W)."""

    layer: str
    unit: int
    label: str
    iou: float
    samples: np.ndarray
    images: np.ndarray
    masks: np.ndarray


def top_examples(layers: dict[str, xr.Dataset], read: dict[str, Callable[[int], np.ndarray]], images: Any,
                 geometry: dict[str, Geometry], size: tuple[int, int], count: int = 4) -> list[Example]:
    """For each layer, its unit of largest label IoU (first quantile): its ``count`` top images and the
    thresholded upsampled mask in each (``read[layer](sample)``: that layer's maps (unit, h, w) of one sample)."""
    out = []
    for layer, ds in layers.items():
        u = int(ds["label_iou"].values[0].argmax())
        samples = ds["top_sample"].values[:count, u]
        t = float(ds["threshold"].values[0, u])
        maps = np.stack([np.asarray(read[layer](int(smp))[u], dtype=np.float64) for smp in samples])
        pics = np.stack([np.asarray(images[int(smp)]) for smp in samples])
        out.append(Example(layer, int(ds["unit"].values[u]), str(ds["label"].values[0, u]),
                           float(ds["label_iou"].values[0, u]), samples, pics,
                           upsample(maps, size, geometry[layer]) > t))
    return out


def mi_agreement(ds: xr.Dataset, mi: xr.Dataset) -> xr.Dataset:
    """Add each unit's most informative factor (largest ``mi_pooled`` of the MI stage, bits) to a layer's
    result: ``top_factor``, ``top_factor_mi`` and ``top_factor_significant`` (unit)."""
    pooled = mi["mi_pooled"].transpose("factor", "unit").sel(unit=ds["unit"].values)
    best = pooled.values.argmax(0)
    factors = np.asarray([str(f) for f in pooled["factor"].values], dtype=object)
    ds = ds.copy()
    ds["top_factor"] = ("unit", factors[best])
    ds["top_factor_mi"] = ("unit", pooled.values[best, np.arange(len(best))].astype(np.float64))
    ds["top_factor_mi"].attrs.update(units="bits", description="MI of the unit's mean response with top_factor")
    if "significant_pooled" in mi:
        sig = mi["significant_pooled"].transpose("factor", "unit").sel(unit=ds["unit"].values).values
        ds["top_factor_significant"] = ("unit", sig[best, np.arange(len(best))].astype(bool))
    return ds


def tally(layers: dict[str, xr.Dataset], concepts: Concepts, quantile: int = 0) -> list[dict[str, Any]]:
    """NetDissect-Lite's tally rows (``unit`` 1-based, ``category``, ``label``, ``score`` and, per category,
    ``-label``, ``-truth``, ``-activation``, ``-intersect``, ``-iou``), with a leading ``layer`` column,
    units by descending score within each layer. Categories: ``part`` (parts and unions), ``image``."""
    kinds = np.asarray(["image" if k == "image" else "part" for k in concepts.kinds])
    rows = []
    for layer, ds in layers.items():
        iou = ds["iou"].values[quantile]
        for u in np.argsort(-ds["label_iou"].values[quantile], kind="stable"):
            best = int(iou[u].argmax())
            row: dict[str, Any] = {"layer": layer, "unit": int(ds["unit"].values[u]) + 1, "category": kinds[best],
                                   "label": concepts.names[best], "score": float(iou[u, best])}
            for cat in ("part", "image"):
                idx = np.flatnonzero(kinds == cat)
                if len(idx) == 0:
                    continue
                c = int(idx[iou[u, idx].argmax()])
                row.update({f"{cat}-label": concepts.names[c], f"{cat}-truth": int(ds["concept_area"].values[c]),
                            f"{cat}-activation": int(ds["mask_area"].values[quantile, u]),
                            f"{cat}-intersect": int(ds["intersection"].values[quantile, u, c]),
                            f"{cat}-iou": float(iou[u, c])})
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class Spec:
    """Settings of the dissection stage (config ``dissection``)."""

    quantiles: list
    iou_threshold: float
    concepts: dict
    image_factors: list[str]
    layers: list[str]
    batch_size: int
    top_images: int
    workers: int
    untrained: bool
    rotation_layer: str  # a layer, 'auto' or '' (none)
    rotation_alphas: list
    seed: int


def _check_spec(spec: Spec) -> None:
    bad = [q for q in spec.quantiles if not isinstance(q, (int, float)) or not 0 < q < 1]
    if not spec.quantiles or bad:
        raise DissectionError(f"dissection.quantiles: {spec.quantiles!r} must be a non-empty list of values in (0, 1)")
    bad = [a for a in spec.rotation_alphas if not isinstance(a, (int, float)) or not 0 <= a <= 1]
    if bad:
        raise DissectionError(f"dissection.rotation_alphas: {bad} are not in [0, 1]")
    if spec.batch_size < 1 or spec.top_images < 1 or spec.workers < 1:
        raise DissectionError("dissection.batch_size, top_images and workers must be >= 1")


def _map_layers(tree: xr.DataTree, wanted: list[str], path: str | Path) -> list[str]:
    """The activation store's layers to dissect: every (or every wanted) layer stored as full maps."""
    from ..nets import READOUT_LAYERS

    stored = [n for n in tree.children if n != PIXELS]
    layers = [n for n in READOUT_LAYERS if n in stored] + [n for n in stored if n not in READOUT_LAYERS]
    unknown = [n for n in wanted if n not in layers]
    if unknown:
        raise DissectionError(f"dissection.layers: {unknown} not in {path} (layers: {layers})")
    out = []
    for name in wanted or layers:
        act = tree[name]["activation"]
        if act.dims != ("sample", "unit", "y", "x") or act.attrs.get("pooling", "full") != "full":
            if wanted:
                raise DissectionError(f"dissection.layers: {name} of {path} is not stored as full maps "
                                      f"(dims {act.dims}, pooling {act.attrs.get('pooling')!r})")
            log.info("%s: not stored as full maps (dims %s), not dissected", name, act.dims)
            continue
        out.append(name)
    if not out:
        raise DissectionError(f"{path}: no layer stored as full maps (activations.pooling) to dissect")
    return out


def _store_batches(group: Any, layers: list[str], n: int, batch: int) -> Batches:
    """Batches of an activation store's layers, read from the checked store's shard files."""
    from ..activations.shards import read_samples

    def gen() -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        for a in range(0, n, batch):
            b = min(n, a + batch)
            yield a, {name: torch.from_numpy(read_samples(group[name]["activation"], a, b)) for name in layers}
    return gen


def _network_batches(model: torch.nn.Module, images: Any, layers: list[str], n: int, batch: int,
                     dtype: torch.dtype) -> Batches:
    """Batches of a network's maps computed on the fly from the stimulus images (cast to ``dtype``)."""
    from ..nets import network_input, readout_modules

    mods = readout_modules(model)

    def gen() -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        for a in range(0, n, batch):
            b = min(n, a + batch)
            out: dict[str, torch.Tensor] = {}
            hooks = [mods[name].register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.to(dtype)))
                     for name in layers]
            try:
                with torch.inference_mode():
                    model(network_input(np.asarray(images[a:b])))
            finally:
                for h in hooks:
                    h.remove()
            yield a, out
    return gen


def _rotated_batches(source: Batches, layer: str, q: np.ndarray) -> Batches:
    """Batches of one layer's maps with its unit space rotated by ``q`` (float32)."""
    rot = torch.from_numpy(q.astype(np.float32))

    def gen() -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        for a, maps in source():
            yield a, {layer: torch.einsum("ij,bjyx->biyx", rot, maps[layer].float())}
    return gen


def _pixel_batches(images: Any, n: int, batch: int) -> Batches:
    """The images as maps: each colour channel a unit (float16 holds 0..255 exactly)."""
    def gen() -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        for a in range(0, n, batch):
            x = torch.from_numpy(np.asarray(images[a:min(n, a + batch)]))
            yield a, {PIXELS: x.permute(0, 3, 1, 2).to(torch.float16)}
    return gen


def _part_statistics(parts: Any, n: int, batch: int, n_labels: int) -> np.ndarray:
    """(n_labels, H*W): in how many images each pixel has each part label."""
    out = None
    for a in range(0, n, batch):
        p = torch.from_numpy(np.asarray(parts[a:min(n, a + batch)])).long()
        flat = p.reshape(len(p), -1)
        idx = flat * flat.shape[1] + torch.arange(flat.shape[1])
        c = torch.bincount(idx.ravel(), minlength=n_labels * flat.shape[1])
        out = c if out is None else out + c
    assert out is not None
    return out.view(n_labels, -1).numpy()


def snapshot_epoch(path: str | Path) -> int:
    """The epoch of a snapshot file ``.../snapshots/epoch{E}.pt``."""
    import re

    m = re.fullmatch(r"epoch(\d+)\.pt", Path(path).name)
    if not m:
        raise DissectionError(f"--snapshots: {path} is not a training snapshot (.../snapshots/epoch<E>.pt)")
    return int(m.group(1))


def _text(values: Any) -> np.ndarray:
    """Labels (any string dtype) as an object array of str."""
    return np.asarray([str(v) for v in np.asarray(values).ravel()], dtype=object)


def _results(counts: dict[str, LayerCounts], geometry: dict[str, Geometry], units: dict[str, np.ndarray],
             cells: dict[str, tuple[int, int]], concepts: Concepts, areas: np.ndarray, spec: Spec
             ) -> dict[str, xr.Dataset]:
    return {layer: layer_result(layer, c, concepts, areas, list(spec.quantiles), units[layer], spec.iou_threshold,
                                geometry[layer], cells[layer]).assign(concept_area=("concept", areas))
            for layer, c in counts.items()}


def run(spec: Spec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """Dissect every map layer of ``inputs["activations"]`` (and the pixels, an untrained network of the same
    architecture and rotated representations) against the part maps of ``inputs["stimuli"]`` -> store ``out``,
    tally ``tally``, figures ``figure`` and ``units_figure``."""
    import csv
    import io

    from ..activations.extract import load_trained
    from ..figures.dissection import dissection_figure, units_figure
    from ..nets import build_model
    from ..stimuli.store import open_stimuli
    from ..store import atomic_store, open_group, open_tree, write_text, write_tree

    _check_spec(spec)
    act_path, stim_path = inputs["activations"], inputs["stimuli"]
    tree = open_tree(act_path, "activation store")
    stim = open_stimuli(stim_path, require=("parts", "image"))
    layers = _map_layers(tree, list(spec.layers), act_path)
    n = int(stim.sizes["sample"])
    first = tree[layers[0]]
    if int(first.sizes["sample"]) != n or tree.attrs.get("set") != stim.attrs.get("set"):
        raise DissectionError(f"{act_path} ({tree.attrs.get('set')!r}, {first.sizes['sample']} samples) is not "
                              f"an activation store of {stim_path} ({stim.attrs.get('set')!r}, {n} samples)")
    if "identity" in stim.coords and "identity" in first.coords and not np.array_equal(
            stim["identity"].values, first["identity"].values):
        raise DissectionError(f"{act_path}: its samples are not those of {stim_path} (identities differ)")
    part_names = [str(p) for p in stim["parts"].attrs.get("part_names", [])]
    if not part_names:
        raise DissectionError(f"{stim_path}: `parts` has no part_names attribute")
    size = (int(stim.sizes["y"]), int(stim.sizes["x"]))
    levels = {}
    for f in spec.image_factors:
        if f in stim.coords and stim[f].dtype.kind in "OUST":
            levels[f] = sorted(set(_text(stim[f].values)))
    concepts = concept_table(part_names, {k: list(v) for k, v in spec.concepts.items()}, list(spec.image_factors),
                             levels)
    member = np.stack([_text(stim[f].values) == lv for f, lv in concepts.image_levels], 1).astype(np.float64) \
        if concepts.image_levels else np.zeros((n, 0))
    group = open_group(act_path, "activation store")
    stim_group = open_group(stim_path, "stimulus store")
    parts_arr, images = stim_group["parts"], stim_group["image"]

    def part_batch(a: int, b: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(parts_arr[a:b])).long()

    def image_batch(a: int, b: int) -> torch.Tensor:
        return torch.from_numpy(member[a:b])

    model, meta = load_trained(inputs["model"])
    geometry = {**layer_geometry(model), PIXELS: Geometry(1, 0, 1)}
    dtype = {"float16": torch.float16, "float32": torch.float32}.get(str(tree.attrs.get("dtype")), None)
    if dtype is None:
        raise DissectionError(f"{act_path}: dtype {tree.attrs.get('dtype')!r} (float16 or float32 only)")
    label_pixels = _part_statistics(parts_arr, n, spec.batch_size, len(part_names))
    areas = concept_areas(label_pixels.sum(1), member.sum(0), size[0] * size[1], concepts)
    quantiles = [float(q) for q in spec.quantiles]
    kwargs = dict(size=size, parts=part_batch, image_onehot=image_batch, quantiles=quantiles,
                  n_labels=len(part_names), n_samples=n, top=spec.top_images, workers=spec.workers)
    units = {name: np.arange(int(tree[name].sizes["unit"])) for name in layers}
    cells = {name: (int(tree[name].sizes["y"]), int(tree[name].sizes["x"])) for name in layers}
    units[PIXELS] = np.arange(int(stim.sizes["channel"]))
    cells[PIXELS] = size

    counts = dissect_network(_pixel_batches(images, n, spec.batch_size), geometry, dtype=torch.float16,
                             desc="pixels", **kwargs)
    counts.update(dissect_network(_store_batches(group, layers, n, spec.batch_size), geometry, dtype=dtype,
                                  desc="trained", **kwargs))
    results = _results(counts, geometry, units, cells, concepts, areas, spec)
    results[PIXELS] = results[PIXELS].assign_coords(channel=("unit", [str(c) for c in stim["channel"].values]))
    if inputs.get("mi"):
        mi_tree = open_tree(inputs["mi"], "MI store")
        for name in layers:
            if name in mi_tree.children and "mi_pooled" in mi_tree[name]:
                results[name] = mi_agreement(results[name], mi_tree[name].to_dataset())
    nodes: dict[str, xr.Dataset] = {f"/{k}": v for k, v in results.items()}
    networks = {"trained": {k: results[k] for k in [PIXELS, *layers]}}
    if spec.untrained:
        torch.manual_seed(spec.seed)
        fresh = build_model(len(meta["classes"]), width=meta["spec"]["width"], stem=meta["spec"]["stem"],
                            in_channels=meta["in_channels"]).eval()
        c = dissect_network(_network_batches(fresh, images, layers, n, spec.batch_size, dtype), geometry,
                            dtype=dtype, desc="untrained", **kwargs)
        untrained = _results(c, geometry, units, cells, concepts, areas, spec)
        nodes.update({f"/untrained/{k}": v for k, v in untrained.items()})
        networks["untrained"] = {PIXELS: results[PIXELS], **untrained}
    for path in sorted(inputs.get("snapshots") or [], key=snapshot_epoch):
        epoch = snapshot_epoch(path)
        snap, _ = load_trained(path)
        c = dissect_network(_network_batches(snap, images, layers, n, spec.batch_size, dtype), geometry,
                            dtype=dtype, desc=f"epoch {epoch}", **kwargs)
        res = _results(c, geometry, units, cells, concepts, areas, spec)
        nodes.update({f"/epoch{epoch}/{k}": v for k, v in res.items()})
        networks[f"epoch {epoch}"] = {PIXELS: results[PIXELS], **res}
    rotation_ds = None
    if spec.rotation_layer and spec.rotation_alphas:
        if spec.rotation_layer != "auto" and spec.rotation_layer not in layers:
            raise DissectionError(f"dissection.rotation_layer: {spec.rotation_layer!r} is not a dissected layer "
                                  f"({layers})")
        name = spec.rotation_layer if spec.rotation_layer != "auto" else rotation_layer(results, layers)
        full = random_rotation(len(units[name]), spec.seed)
        rotated = {}
        for alpha in spec.rotation_alphas:
            src = _rotated_batches(_store_batches(group, [name], n, spec.batch_size), name, rotation(full, alpha))
            c = dissect_network(src, geometry, dtype=torch.float32, desc=f"rotation {alpha:g}", **kwargs)
            rotated[float(alpha)] = _results(c, geometry, units, cells, concepts, areas, spec)[name]
        per = summary({str(a): ds for a, ds in rotated.items()}, concepts).rename(layer="alpha")
        rotation_ds = per.assign_coords(alpha=np.asarray(list(rotated), dtype=np.float64)).drop_vars("units")
        rotation_ds.attrs.update(layer=name, seed=spec.seed, description="the layer's unit space rotated by Q^alpha "
                                 "(Q a random rotation; alpha 0 = the layer itself)")
        nodes["/rotation"] = rotation_ds
    sums = [summary(v, concepts) for v in networks.values()]
    root = xr.concat([s.drop_vars("units") for s in sums], "network", join="outer", compat="equals",
                     coords="different").assign_coords(
        network=np.asarray(list(networks), dtype=object))
    root["units"] = sums[0]["units"]
    share = areas / float(n * size[0] * size[1])
    qs = np.asarray(quantiles)[:, None]
    root = root.assign(
        concept_kind=("concept", np.asarray(concepts.kinds, dtype=object)),
        concept_members=("concept", np.asarray(concepts.members, dtype=object)),
        concept_area=("concept", areas), concept_share=("concept", share),
        ceiling=(("quantile", "concept"), np.minimum(qs, share) / np.maximum(qs, share)),
        location_iou=(("quantile", "concept"), location_iou(label_pixels, n, concepts, quantiles)))
    root["ceiling"].attrs["description"] = ("largest IoU a mask of share exactly q can reach with the concept: "
                                            "min(q, p) / max(q, p), p = concept_share (upsampled masks cover "
                                            "more than q: a guide, not a bound; see mask_area)")
    root["location_iou"].attrs["description"] = ("IoU of a location-only unit: the concept's mean mask over the set, "
                                                 "thresholded at the top quantile")
    root.attrs.update(epochs=int(meta["spec"].get("epochs", 0)))
    root.attrs.update(model=str(tree.attrs.get("model", "")), set=str(stim.attrs.get("set", "")),
                      source=str(act_path), stimuli=str(stim_path), iou_threshold=spec.iou_threshold,
                      part_names=part_names, n_samples=n, image_height=size[0], image_width=size[1])
    nodes["/"] = root
    sources = [p for p in (act_path, stim_path, inputs["model"], inputs.get("mi"), *(inputs.get("snapshots") or []))
               if p]
    with atomic_store(outputs["out"], inputs=sources) as tmp:
        write_tree(xr.DataTree.from_dict(nodes), tmp)
    rows = tally(networks["trained"], concepts)
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(outputs["tally"], buf.getvalue())
    dissection_figure(root, rotation_ds, outputs["figure"], title=title)
    read = {PIXELS: lambda i: np.moveaxis(np.asarray(images[i]), -1, 0),
            **{k: (lambda i, k=k: np.asarray(group[k]["activation"][i])) for k in layers}}
    examples = top_examples(networks["trained"], read, images, geometry, size)
    units_figure(examples, outputs["units_figure"], title=title)
    for layer in [PIXELS, *layers]:
        row = root.sel(network="trained", layer=layer).isel(quantile=0)
        log.info("%s: %d of %d units are detectors, %d concepts", layer, int(row["detectors"]), int(row["units"]),
                 int(row["unique_concepts"]))
    return key_numbers(outputs["out"])


def key_numbers(path: str | Path) -> dict[str, str]:
    """The report's numbers (first quantile): detectors over every layer (trained, untrained), the layer with the
    most, and the concepts that have a detector."""
    from ..store import open_tree

    root = open_tree(path, "dissection store").to_dataset().isel(quantile=0)
    q = float(root["quantile"].values)
    layers = [str(v) for v in root["layer"].values if str(v) != PIXELS]
    trained = root.sel(network="trained", layer=layers)
    units = int(root["units"].sel(layer=layers).sum())
    text = f"{int(trained['detectors'].sum())} of {units} units"
    if "untrained" in root["network"].values:
        text += f" (untrained network: {int(root['detectors'].sel(network='untrained', layer=layers).sum())})"
    best = layers[int(trained["detectors"].values.argmax())]
    by_concept = trained["detectors_by_concept"].sum("layer")
    found = [f"{c} {int(v)}" for c, v in zip(by_concept["concept"].values, by_concept.values) if v > 0]
    return {f"dissection ({root.attrs.get('set')}, q = {q:g}): detector units": text,
            "dissection: layer with the most detectors": (
                f"{best}: {int(trained['detectors'].sel(layer=best))} of {int(root['units'].sel(layer=best))}"),
            "dissection: concepts with a detector (units)": ", ".join(found) or "none"}


def report_tables(path: str | Path, inputs: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    """The report's tables: per layer, detectors (trained, untrained), their labels, and how the labels agree
    with each detector's most informative factor (``top_factor`` of the store, or from the model's MI store of
    the set, ``inputs["mi"]``)."""
    import pandas as pd

    from ..store import open_tree

    tree = open_tree(path, "dissection store")
    root = tree.to_dataset()
    mi_tree = open_tree(inputs["mi"], "MI store") if inputs and inputs.get("mi") else None
    rows, pairs = [], []
    for layer in [str(v) for v in root["layer"].values]:
        ds = tree[layer].to_dataset()
        if "top_factor" not in ds and mi_tree is not None and layer in mi_tree.children \
                and "mi_pooled" in mi_tree[layer]:
            ds = mi_agreement(ds, mi_tree[layer].to_dataset())
        det = ds["detector"].values[0]
        labels = ds["label"].values[0][det]
        row = {"layer": layer, "units": int(ds.sizes["unit"]), "detectors": int(det.sum())}
        if "untrained" in root["network"].values:
            row["untrained detectors"] = int(root["detectors"].sel(network="untrained", layer=layer).values[0])
        row["labels (detectors)"] = ", ".join(f"{k} {v}" for k, v in pd.Series(labels).value_counts().items())
        if "top_factor" in ds:
            top = ds["top_factor"].values[det]
            row["most informative factor of the detectors"] = ", ".join(
                f"{k} {v}" for k, v in pd.Series(top).value_counts().items())
            pairs += list(zip(labels, top))
        rows.append(row)
    tables = [("Network dissection per layer (first quantile)", pd.DataFrame(rows))]
    if pairs:
        cross = pd.crosstab(pd.Series([p[0] for p in pairs], name="dissection label"),
                            pd.Series([p[1] for p in pairs], name="most informative factor (MI)"))
        tables.append(("Detectors: dissection label against the unit's most informative factor", cross))
    return tables
