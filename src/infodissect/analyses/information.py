"""The MI stage: information about every generative factor in each layer of a network and in the pixels.

For each read-out layer of an activation store (and for the stimulus images
themselves, the baseline every layer is compared to) it computes, with the MI
engine (:func:`infodissect.info.mutual_information`):

- ``mi`` (factor, unit, y, x): each unit at each position against each factor,
  spatially resolved (vector layers have no y, x);
- ``mi_pooled`` (factor, unit): each unit's spatially averaged response against each
  factor (for vector layers the same as ``mi``);
- maximum-statistic permutation thresholds (``threshold``, ``threshold_pooled``, per
  factor, over all variables of the layer), ``significant`` masks and ``pvalue``.

A graded factor that only means something within the level of another (the intensity
of *an* expression, the strength of *a* sex) is measured given that factor (config
``mi.given``): ``mi`` is then I(x; factor | parent), the average over the parent's levels
of the information within each, with its own permutation null (labels permuted within
the parent's levels). Marginally such a factor moves a pixel one way for one level and
the other way for another, and the two cancel. The ``given`` coordinate along ``factor``
names the parent ("" for factors measured marginally).

The result is a DataTree store (one group per layer, per the MI contract), written
layer by layer into ``<out>.partial`` and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ..faces.factors import FACTORS
from ..info import mutual_information
from ..nets import READOUT_LAYERS
from ..stimuli.store import open_stimuli
from ..store import StoreError, atomic_store, dask_scheduler, open_tree, write_zarr

log = logging.getLogger(__name__)

PIXELS = "pixels"  # name of the pixel "layer" (the network's input)
SPATIAL = ("y", "x")


class InformationError(ValueError):
    """An MI request names something the input does not have."""


def factor_table(coords: xr.Dataset | xr.DataArray, factors: list[str] | None = None) -> xr.Dataset:
    """The generative factors along ``sample`` that vary in a set, as a Dataset with their ``kind`` attrs.

    ``factors`` (default: every known generative factor present) restricts the list; a
    named factor that the set lacks is an error, one that is constant is dropped.
    """
    present = [name for name in FACTORS if name in coords.coords]
    if factors:
        missing = [f for f in factors if f not in present]
        if missing:
            raise InformationError(f"factor(s) {missing} are not coordinates of the set (it has {present})")
        present = [f for f in FACTORS if f in factors]
    out = {}
    for name in present:
        values = np.asarray(coords[name].values)
        if values.dtype.kind in "OTU":
            values = np.asarray([str(v) for v in values.tolist()], dtype=object)
        if len(np.unique(values)) < 2:
            continue
        out[name] = xr.DataArray(values, dims="sample", attrs={"kind": FACTORS[name].kind, "unit": FACTORS[name].unit})
    if not out:
        raise InformationError("no generative factor varies in this set: nothing to measure")
    return xr.Dataset(out, coords={"sample": coords["sample"].values})


def variable_chunks(x: xr.DataArray, dim: str, chunk_mb: float) -> dict[str, int]:
    """Chunks for ``x``: all of ``dim`` in one chunk and as many variables as fit ``chunk_mb`` of float64.

    The innermost variable dims are kept whole while they fit; the outermost one that
    does not is split.
    """
    per_var = x.sizes[dim] * 8
    budget = max(1, int(chunk_mb * 2**20 // per_var))
    chunks: dict[str, int] = {dim: -1}
    for d in reversed([d for d in x.dims if d != dim]):
        size = x.sizes[d]
        chunks[d] = max(1, min(size, budget))
        budget = max(1, budget // size)
    return chunks


def _summary(res: xr.Dataset, suffix: str) -> dict[str, xr.DataArray]:
    """The variables of one permutation result, factor first, named with ``suffix``."""
    mi = res["mi"]
    order = ("factor",) + tuple(d for d in mi.dims if d != "factor")
    return {f"mi{suffix}": mi.transpose(*order).astype(np.float32),
            f"significant{suffix}": res["significant"].transpose(*order),
            f"pvalue{suffix}": res["pvalue"].transpose(*order).astype(np.float32),
            f"threshold{suffix}": res["threshold"],
            f"null_max{suffix}": res["null_max"].rename(permutation=f"permutation{suffix}")}


def _with_statistics(res: xr.Dataset | xr.DataArray) -> xr.Dataset:
    """An engine result as a Dataset with permutation statistics; without permutations (``n_perm`` 0, the
    engine's bare MI) nothing is significant: ``threshold`` and ``pvalue`` NaN, no ``null_max`` rows."""
    if isinstance(res, xr.Dataset):
        return res
    mi = res
    per_factor = mi.isel({d: 0 for d in mi.dims if d != "factor"}, drop=True)
    return xr.Dataset({"mi": mi, "significant": xr.zeros_like(mi, dtype=bool),
                       "pvalue": xr.full_like(mi, np.nan, dtype=np.float64),
                       "threshold": xr.full_like(per_factor, np.nan, dtype=np.float64),
                       "null_max": xr.DataArray(np.empty((0, mi.sizes["factor"])), dims=("permutation", "factor"),
                                                coords={"factor": mi["factor"]})}, attrs=dict(mi.attrs))


def conditions(factors: xr.Dataset, given: dict[str, str] | None, pool: xr.Dataset | None = None) -> dict[str, str]:
    """The factor each factor of ``factors`` is measured given ("" = marginally), checked.

    ``given`` maps a factor to a categorical parent factor ("" = none), looked up in ``pool`` (the set's
    varying factors; default ``factors``). Entries whose factor is not measured are ignored;
    a factor whose parent does not vary in the set is measured marginally (its information
    is then the same). A parent that is not categorical, or a factor given itself, is an
    error naming the key.
    """
    pool = factors if pool is None else pool
    out = {str(f): "" for f in factors.data_vars}
    for name, parent in (given or {}).items():
        if not parent:  # measured marginally
            continue
        if name not in FACTORS or parent not in FACTORS:
            bad = name if name not in FACTORS else parent
            raise InformationError(f"mi.given.{name}: {bad!r} is not a generative factor")
        if FACTORS[parent].kind != "categorical" or parent == name:
            raise InformationError(f"mi.given.{name}: {parent!r} is not a categorical factor other than {name!r}; "
                                   "a factor is measured given the levels of a categorical one")
        if name in out and parent in pool.data_vars:
            out[name] = parent
    return out


def _measured(x: xr.DataArray, factors: xr.Dataset, given: dict[str, str], pool: xr.Dataset,
              **kwargs: Any) -> xr.Dataset:
    """:func:`mutual_information` of ``x`` with every factor, each given its parent (``given``, values from
    ``pool``), with statistics, factors in the order of ``factors``."""
    keep = ["mi", "significant", "pvalue", "threshold", "null_max"]
    parts = {}
    for parent in dict.fromkeys(given.values()):
        names = [f for f, p in given.items() if p == parent]
        res = mutual_information(x, factors[names], cond=pool[parent] if parent else None, **kwargs)
        parts[parent] = _with_statistics(res)[keep]
    if len(parts) == 1:
        return next(iter(parts.values()))
    attrs = parts.get("", next(iter(parts.values()))).attrs
    return xr.concat(list(parts.values()), dim="factor", data_vars="all", coords="minimal",
                     combine_attrs="drop").sel(factor=list(given)).assign_attrs(attrs)


def layer_information(act: xr.DataArray, factors: xr.Dataset, *, n_perm: int, alpha: float = 0.05,
                      seed: int = 0, chunk_mb: float = 64.0, given: dict[str, str] | None = None,
                      pool: xr.Dataset | None = None) -> xr.Dataset:
    """MI of one layer's activations (sample, unit[, y, x]) with every factor, resolved and pooled.

    Returns a Dataset with ``mi``, ``significant``, ``pvalue`` (factor, unit[, y, x]),
    ``threshold`` (factor), ``null_max`` and their ``*_pooled`` counterparts over the
    spatially averaged response (factor, unit), all in bits. A factor named in ``given``
    is measured given its categorical parent factor (:func:`conditions`; the parent's values
    come from ``pool``, default ``factors``); the ``given`` coordinate records it.
    """
    x = act.drop_vars([c for c in act.coords if c not in act.dims])
    x = x.chunk(variable_chunks(x, "sample", chunk_mb))
    kwargs: dict[str, Any] = dict(dim="sample", n_perm=n_perm, alpha=alpha, seed=seed)
    pool = factors if pool is None else pool
    parents = conditions(factors, given, pool)
    resolved = _measured(x, factors, parents, pool, **kwargs)
    out = _summary(resolved, "")
    if all(d in act.dims for d in SPATIAL):
        pooled = x.astype(np.float32).mean(SPATIAL)
        out.update(_summary(_measured(pooled, factors, parents, pool, **kwargs), "_pooled"))
    else:
        out.update({f"{k}_pooled": v.rename(permutation="permutation_pooled") if k == "null_max" else v
                    for k, v in _summary(resolved, "").items()})
    ds = xr.Dataset(out)
    names = [str(f) for f in ds.factor.values]
    # Text as object arrays: Zarr v3 stores them as variable-length strings.
    ds = ds.assign_coords(factor=np.asarray(names, dtype=object))
    ds["factor_kind"] = ("factor", np.asarray([str(factors[f].attrs["kind"]) for f in names], dtype=object))
    ds = ds.assign_coords(given=("factor", np.asarray([parents[f] for f in names], dtype=object)))
    for name in ds.data_vars:
        if name.startswith(("mi", "threshold", "null_max")):
            ds[name].attrs["units"] = "bits"
    ds.attrs.update({k: v for k, v in resolved.attrs.items() if isinstance(v, (str, int, float))})
    ds.attrs["discrete_factors"] = json.dumps(resolved.attrs.get("discrete_factors", []))
    ds.attrs["pooled"] = "MI of the spatially averaged response of each unit" if "y" in act.dims else "vector layer"
    return ds


def pixel_array(stim: xr.Dataset) -> xr.DataArray:
    """The stimulus images as a labelled float32 array (sample, channel, y, x), the 'layer' of pixels."""
    image = stim["image"]
    return image.astype(np.float32).transpose("sample", "channel", "y", "x").rename("activation")


def open_layers(path: str | Path, layers: list[str] | None) -> tuple[xr.DataTree, list[str]]:
    """An activation store and the read-out layers to measure (all by default), checked."""
    p = Path(path)
    tree = open_tree(p, "activation store")
    stored = [n for n in READOUT_LAYERS if n in tree.children]
    names = list(layers) if layers else stored
    missing = [n for n in names if n not in stored]
    if missing:
        raise InformationError(f"{p}: layer(s) {missing} were not extracted (the store has {stored})")
    return tree, names


def _finish(tmp: Path, attrs: dict[str, Any]) -> None:
    """Root attrs and consolidated metadata of a finished MI store."""
    root = zarr.open_group(str(tmp), mode="r+")
    root.attrs.update(attrs)
    zarr.consolidate_metadata(str(tmp))


def information_store(layers: dict[str, xr.DataArray], factors: xr.Dataset, out: str | Path, attrs: dict[str, Any],
                      *, n_perm: int, alpha: float, seed: int, chunk_mb: float,
                      given: dict[str, str] | None = None, pool: xr.Dataset | None = None) -> Path:
    """Measure every layer in ``layers`` and write the results, one group each, to ``out`` (atomically)."""
    with atomic_store(out, inputs=[attrs["source"]]) as tmp:
        xr.Dataset(attrs=attrs).to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
        for i, (name, act) in enumerate(layers.items()):
            start = time.perf_counter()
            n_vars = math.prod(s for d, s in act.sizes.items() if d != "sample")
            log.info("layer %s (%d/%d): %d variables x %d factors x %d samples, %d permutations", name, i + 1,
                     len(layers), n_vars, len(factors.data_vars), act.sizes["sample"], n_perm)
            # Loaded (results hold no sample dim: small): a lazy result (n_perm 0) would be computed again for
            # every use after the write (the log line's maxima computed it twice more).
            ds = layer_information(act, factors, n_perm=n_perm, alpha=alpha, seed=seed, chunk_mb=chunk_mb,
                                   given=given, pool=pool).load()
            ds.attrs.update(attrs, layer=name)
            # One group per layer, written as it is done; metadata consolidated once, by _finish.
            write_zarr(ds, tmp, group=name, mode="a", consolidated=False)
            log.info("layer %s done in %.1f s; max MI %.3f bits (%s)", name, time.perf_counter() - start,
                     float(ds["mi"].max()), str(ds["mi"].max(dim=[d for d in ds["mi"].dims if d != "factor"])
                                                .idxmax("factor").values))
        _finish(tmp, attrs)
    return Path(out)


def activation_information(path: str | Path, out: str | Path, *, layers: list[str] | None = None,
                           factors: list[str] | None = None, n_perm: int, alpha: float = 0.05, seed: int = 0,
                           chunk_mb: float = 64.0, given: dict[str, str] | None = None) -> Path:
    """MI between every layer of an activation store and every varying factor of its set (each given its
    parent in ``given``, :func:`conditions`), into ``out``."""
    tree, names = open_layers(path, layers)
    table, pool = factor_table(tree[names[0]].dataset, factors), factor_table(tree[names[0]].dataset)
    parents = conditions(table, given, pool)
    acts = {n: tree[n].dataset["activation"] for n in names}
    attrs = {k: v for k, v in tree.attrs.items() if k in ("model", "set", "task", "classes", "architecture")}
    attrs.update(source=str(path), n_perm=int(n_perm), alpha=float(alpha), seed=int(seed),
                 layers=json.dumps(names), factors=json.dumps(list(table.data_vars)), given=json.dumps(parents))
    return information_store(acts, table, out, attrs, n_perm=n_perm, alpha=alpha, seed=seed, chunk_mb=chunk_mb,
                             given=parents, pool=pool)


def pixel_information(stimuli: str | Path, out: str | Path, *, factors: list[str] | None = None, n_perm: int,
                      alpha: float = 0.05, seed: int = 0, chunk_mb: float = 64.0,
                      given: dict[str, str] | None = None) -> Path:
    """MI between every pixel (and channel) of a stimulus set and every varying factor (each given its parent
    in ``given``, :func:`conditions`), into ``out``."""
    stim = open_stimuli(stimuli, require=("image",))
    table, pool = factor_table(stim, factors), factor_table(stim)
    parents = conditions(table, given, pool)
    attrs = {"model": PIXELS, "set": stim.attrs.get("set", ""), "source": str(stimuli), "n_perm": int(n_perm),
             "alpha": float(alpha), "seed": int(seed), "layers": json.dumps([PIXELS]),
             "factors": json.dumps(list(table.data_vars)), "given": json.dumps(parents)}
    # Read each task's block of pixels straight from the store: rechunking the store's sample chunks into
    # all-sample blocks held several of them on every worker at once (an all-to-all).
    blocks = variable_chunks(pixel_array(stim), "sample", chunk_mb)
    image = pixel_array(open_stimuli(stimuli, require=("image",), chunks=blocks))
    return information_store({PIXELS: image}, table, out, attrs, n_perm=n_perm, alpha=alpha, seed=seed,
                             chunk_mb=chunk_mb, given=parents, pool=pool)


def load_layers(mi_path: str | Path, pixels_path: str | Path | None = None) -> dict[str, xr.Dataset]:
    """The layers of an MI store (and the pixels' result first, when given), loaded, input to output."""
    layers: dict[str, xr.Dataset] = {}
    if pixels_path is not None:
        layers[PIXELS] = open_tree(pixels_path, "MI store")[PIXELS].to_dataset().load()
    tree = open_tree(mi_path, "MI store")
    for name in READOUT_LAYERS:
        if name in tree.children:
            layers[name] = tree[name].to_dataset().load()
    if not layers:
        raise StoreError(f"{mi_path}: no layer results in the MI store")
    first = [str(f) for f in next(iter(layers.values()))["factor"].values]
    for name, ds in layers.items():
        if [str(f) for f in ds["factor"].values] != first:
            raise InformationError(f"{name}: its factors differ from the other layers' ({first}); "
                                   f"measure pixels and layers on the same set and factors")
    if PIXELS in layers and len(layers) > 1:
        layers[PIXELS] = _comparable_pixels(layers[PIXELS], next(v for k, v in layers.items() if k != PIXELS))
    return layers


def _given(ds: xr.Dataset) -> np.ndarray:
    return np.asarray([str(g) for g in ds["given"].values]) if "given" in ds.coords else np.full(ds.sizes["factor"], "")


def _comparable_pixels(pixels: xr.Dataset, layer: xr.Dataset) -> xr.Dataset:
    """The pixels' result with NaN for each factor measured given another than in the layers (``mi.given`` vs
    ``mi.given_layers``): the two numbers answer different questions and are not set side by side."""
    differ = _given(pixels) != _given(layer)
    if not differ.any():
        return pixels
    names = [str(f) for f, d in zip(pixels["factor"].values, differ) if d]
    log.warning("pixels and layers measured %s given different factors (mi.given, mi.given_layers): the pixels' "
                "values of these factors are left out of the layer profile", names)
    out = pixels.copy()
    for name in out.data_vars:
        if "factor" in out[name].dims and out[name].dtype.kind == "f":
            out[name] = out[name].where(~xr.DataArray(differ, dims="factor"))
    return out.assign_coords(given=("factor", np.asarray(_given(layer), dtype=object)))


@dataclass(frozen=True)
class PixelsSpec:
    """Settings of the MI stage (config ``mi``): factors ([] = every varying one), the categorical factor each
    graded one is measured given, permutations, family-wise alpha, seed, Dask chunk size (MB of float64) and
    scheduler."""

    factors: list[str]
    given: dict[str, str]
    n_perm: int
    alpha: float
    seed: int
    chunk_mb: float
    scheduler: str

    def measure(self) -> dict[str, Any]:
        return dict(factors=self.factors or None, given=dict(self.given), n_perm=self.n_perm, alpha=self.alpha, seed=self.seed,
                    chunk_mb=float(self.chunk_mb))


@dataclass(frozen=True)
class LayersSpec(PixelsSpec):
    """:class:`PixelsSpec` and the layers to measure ([] = every extracted one)."""

    layers: list[str]


def run_layers(spec: LayersSpec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """The MI stage on a model's layers: ``inputs["activations"]`` -> MI store ``outputs["out"]``."""
    with dask_scheduler(spec.scheduler, threads=1):
        activation_information(inputs["activations"], outputs["out"], layers=spec.layers or None, **spec.measure())
    return {}


def run_pixels(spec: PixelsSpec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """The MI stage on a stimulus set's pixels: ``inputs["stimuli"]`` -> MI store ``outputs["out"]``."""
    with dask_scheduler(spec.scheduler, threads=1):
        pixel_information(inputs["stimuli"], outputs["out"], **spec.measure())
    return {}
