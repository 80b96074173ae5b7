"""The labelled front of the MI engine: :func:`mutual_information` over xarray and Dask.

``x`` is any DataArray with a sample dimension (activations (sample, unit, y, x),
pixels (sample, y, x, channel), vertex displacements (sample, vertex, coord) ...);
``y`` is a Dataset of factors along the same samples (or one DataArray). Every
variable of ``x`` (each position along its other dims) is copula-normalised once and
paired with every factor; the result carries all of x's other dims plus ``factor``.
With a Dask-backed ``x`` the work maps over chunks along the variable dims (the sample
dim is always one chunk), so a Zarr store larger than memory streams through with
memory bounded by a chunk, on whatever Dask scheduler is active (a local one by
default; a ``distributed.Client`` when the caller made one).
"""

from __future__ import annotations

import contextlib

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr

from ..memory import release_memory
from .copula import copnorm, normal_scores
from .estimators import (LN2, _dterm, _psi_sum, _warn_nan, encode_labels, mi_from_correlation, mi_gg, mi_gg_pairs,
                         mi_model_gd, standardize)
from .stats import null_max_gd, null_max_gg, permutations, pvalues, threshold


class InputError(ValueError):
    """The inputs of :func:`mutual_information` do not fit together."""


def is_discrete(v: xr.DataArray) -> bool:
    """A factor is discrete when its dtype is integer, boolean or text, or its attrs say ``kind: categorical``."""
    kind = v.attrs.get("kind")
    if kind is not None:
        return kind in ("categorical", "discrete")
    return v.dtype.kind in "iubUOT"


def _factors(y: xr.DataArray | xr.Dataset, dim: str) -> xr.Dataset:
    """``y`` as a Dataset of 1-D factors along ``dim``."""
    ds = y.to_dataset(name=y.name or "factor") if isinstance(y, xr.DataArray) else y
    for name, v in ds.data_vars.items():
        if v.dims != (dim,):
            raise InputError(f"factor {name!r} has dims {v.dims}; factors must be 1-D along {dim!r}")
    return ds


def _check_samples(x: xr.DataArray, other: xr.DataArray | xr.Dataset, dim: str, what: str) -> None:
    """Raise if ``other`` does not have exactly ``x``'s samples, in the same order."""
    if other.sizes.get(dim) != x.sizes[dim]:
        raise InputError(f"{what} has {other.sizes.get(dim)} samples along {dim!r}, x has {x.sizes[dim]}")
    if dim in x.coords and dim in other.coords:
        a, b = np.asarray(x[dim].values), np.asarray(other[dim].values)
        if not np.array_equal(a, b):
            raise InputError(f"{what} and x have different {dim!r} coordinates (first mismatch at position "
                             f"{int(np.flatnonzero(a != b)[0])}); align them first")


def _prepare_factors(ds: xr.Dataset, seed: int) -> tuple[list[str], np.ndarray, list[tuple[int, np.ndarray]]]:
    """Names, copula-normalised continuous factors (n, Qc) and (position, codes) of discrete ones."""
    names = [str(k) for k in ds.data_vars]
    cont, disc = [], []
    for i, name in enumerate(names):
        v = ds[name]
        if is_discrete(v):
            disc.append((i, encode_labels(v.values)[0]))
        else:
            cont.append(copnorm(np.asarray(v.values, dtype=np.float64), seed=seed + 1 + i))
    c = np.stack(cont, 1) if cont else np.zeros((ds.sizes[next(iter(ds.dims))], 0))
    return names, c, disc


def _copnorm_block(block: np.ndarray, seed: int) -> np.ndarray:
    """Copula-normalised float64 rows (P, n) of a block (*vars, n)."""
    n = block.shape[-1]
    return copnorm(block.reshape(-1, n), seed=seed, axis=-1, dtype=torch.float64)


def _continuous(disc: list[tuple[int, np.ndarray]], n_factors: int) -> list[int]:
    """Positions of the continuous factors (those not in ``disc``)."""
    discrete = {p for p, _ in disc}
    return [i for i in range(n_factors) if i not in discrete]


def _copula_rows_mi(rows: np.ndarray, cont: np.ndarray, disc: list[tuple[int, np.ndarray]], n_factors: int,
                    biascorrect: bool) -> np.ndarray | None:
    """MI of univariate copula-normalised rows (P, n) with every factor from one pass of moments
    (:func:`compiled.copula_moments`), or None where this shortcut does not apply.

    Every row is a permutation of the same normal scores, so all rows share their mean and
    sum of squares: a row's correlation with a factor is one dot product, and its
    class-conditional variances come from its class sums of x and x^2. Same estimates as
    :func:`mi_gg_pairs` and :func:`mi_model_gd`, without a pass to centre or scale.
    """
    n = rows.shape[-1]
    counts = [np.bincount(codes) for _, codes in disc]
    if not isinstance(rows, np.ndarray) or rows.dtype != np.float64 or any((c < 2).any() for c in counts):
        return None
    from . import compiled

    scores = normal_scores(n).numpy()
    ss = float(np.sum((scores - scores.mean()) ** 2))
    ys = standardize(cont) if cont.shape[1] else cont
    codes = np.stack([c for _, c in disc], 1) if disc else np.zeros((n, 0), np.int64)
    dots, s1, s2 = compiled.copula_moments(rows, ys, codes, max((len(c) for c in counts), default=1))
    out = np.empty((rows.shape[0], n_factors))
    cont_pos = _continuous(disc, n_factors)
    if cont_pos:
        out[:, cont_pos] = _warn_nan(mi_from_correlation(dots / np.sqrt(ss), n, biascorrect), "mi_gg_pairs")
    h_all = 0.5 * np.log(ss / (n - 1.0)) - (float(_dterm(n) + _psi_sum(n, 1)) if biascorrect else 0.0)
    for f, ((q, _), cnt) in enumerate(zip(disc, counts)):
        k = len(cnt)
        with np.errstate(divide="ignore", invalid="ignore"):
            h_cls = 0.5 * np.log((s2[:, f, :k] - s1[:, f, :k] ** 2 / cnt) / (cnt - 1.0))
        if biascorrect:
            h_cls = h_cls - (_dterm(cnt) + _psi_sum(cnt, 1))
        out[:, q] = _warn_nan((h_all - h_cls @ (cnt / n)) / LN2, "mi_model_gd")
    return out


def _rows_mi(rows: np.ndarray, cont: np.ndarray, disc: list[tuple[int, np.ndarray]], n_factors: int, d: int,
             biascorrect: bool) -> np.ndarray:
    """MI of copula-normalised rows (P*d, n), d rows per variable, with every factor: (P, n_factors)."""
    n = rows.shape[-1]
    if d == 1:
        fast = _copula_rows_mi(rows, cont, disc, n_factors, biascorrect)
        if fast is not None:
            return fast
    x = rows.reshape(-1, d, n).transpose(2, 0, 1)  # (n, P, d) view
    out = np.empty((x.shape[1], n_factors))
    cont_pos = _continuous(disc, n_factors)
    if cont_pos:
        if d > 1:
            for j, q in enumerate(cont_pos):
                out[:, q] = mi_gg(x, np.broadcast_to(cont[:, j, None, None], (n, x.shape[1], 1)), biascorrect)
        else:
            out[:, cont_pos] = mi_gg_pairs(x[..., 0], cont, biascorrect)
    for q, codes in disc:
        out[:, q] = mi_model_gd(x if d > 1 else x[..., 0], codes, biascorrect)
    return out


def _block_mi(block: np.ndarray, cont: np.ndarray, disc: list[tuple[int, np.ndarray]], n_factors: int,
              mv: bool, biascorrect: bool, seed: int) -> np.ndarray:
    """MI of every variable of a block (*vars[, d], n) with every factor: (*vars, n_factors)."""
    shape = block.shape[:-2] if mv else block.shape[:-1]
    d = block.shape[-2] if mv else 1
    out = _rows_mi(_copnorm_block(block, seed), cont, disc, n_factors, d, biascorrect)
    release_memory()
    return out.reshape(shape + (n_factors,))


def _rows_null(rows: np.ndarray, cont: np.ndarray, disc: list[tuple[int, np.ndarray]], n_factors: int,
               perms: np.ndarray, biascorrect: bool, d: int = 1) -> np.ndarray:
    """Null maxima over copula-normalised rows (P*d, n), d rows per variable: (1, n_perm, n_factors)."""
    x = rows.T if d == 1 else rows.T.reshape(rows.shape[1], -1, d)  # (n, P) or (n, P, d)
    out = np.full((perms.shape[0], n_factors), -np.inf)
    cont_pos = _continuous(disc, n_factors)
    if cont_pos:
        out[:, cont_pos] = null_max_gg(x, cont, perms, biascorrect)
    for q, codes in disc:
        out[:, q] = null_max_gd(x, codes, perms, biascorrect)
    release_memory()
    return out[None]


def _mi_and_null(x: xr.DataArray, dim: str, cont: np.ndarray, disc: list, n_factors: int, perms: np.ndarray,
                 biascorrect: bool, seed: int, d: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """MI (*vars, n_factors) and null maxima (n_perm, n_factors), each chunk copula-normalised once.

    With ``d`` > 1 the last variable dim of ``x`` holds the d components of each (multivariate) variable.
    """
    n = x.sizes[dim]
    if isinstance(x.data, da.Array):
        rows = x.data.reshape(-1, n, merge_chunks=True)
    else:
        flat = np.asarray(x.data).reshape(-1, n)
        per_chunk = max(1, min(len(flat) // d, (64 << 20) // (8 * n * d))) * d  # whole variables per chunk
        rows = da.from_array(flat, chunks=(per_chunk, n))
    cop = rows.map_blocks(_copnorm_block, seed, dtype=np.float64)
    mi = cop.map_blocks(_rows_mi, cont, disc, n_factors, d, biascorrect,
                        chunks=(tuple(c // d for c in rows.chunks[0]), (n_factors,)), dtype=np.float64)
    null = cop.map_blocks(_rows_null, cont, disc, n_factors, perms, biascorrect, d, new_axis=2, dtype=np.float64,
                          chunks=((1,) * rows.numblocks[0], (perms.shape[0],), (n_factors,)))
    mi_v, null_v = dask.compute(mi, null.max(axis=0))
    return mi_v.reshape(x.shape[:-1 if d == 1 else -2] + (n_factors,)), null_v


def mutual_information(
    x: xr.DataArray,
    y: xr.DataArray | xr.Dataset,
    dim: str = "sample",
    cond: xr.DataArray | None = None,
    *,
    mvdim: str | None = None,
    biascorrect: bool = True,
    n_perm: int = 0,
    alpha: float = 0.05,
    seed: int = 0,
    scheduler: str | None = None,
) -> xr.DataArray | xr.Dataset:
    """Gaussian-copula MI (bits) between every variable of ``x`` and every factor of ``y``.

    Parameters
    ----------
    x : DataArray with dim ``dim`` (samples) and any others (the variables); NumPy or Dask backed.
    y : Dataset of 1-D factors along ``dim`` (or one DataArray). Integer, boolean or text
        factors (or attrs ``kind: categorical``) are discrete (:func:`mi_model_gd`); floats are
        continuous (:func:`mi_gg_pairs`), each copula-normalised once.
    cond : optional 1-D DataArray along ``dim``: MI is then conditional on it. A continuous
        ``cond`` gives I(x; y | z) by the Gaussian chain rule; a discrete one gives the
        class-weighted MI within each of its classes (x and y copula-normalised within class).
    mvdim : a dim of ``x`` whose values form one multivariate variable (e.g. ``coord`` of a
        vertex's 3-D displacement); it is not in the result.
    biascorrect : apply the reference's bias correction.
    n_perm : permutations for maximum-statistic family-wise correction (0 = none).
    alpha : family-wise error rate of the threshold.
    seed : seeds tie-breaking and permutations.
    scheduler : where the permutation path computes: None uses the active Dask scheduler
        (a ``distributed.Client`` if the caller made one, else the local threaded one);
        ``"tcp://host:port"`` connects to a running distributed scheduler. Without
        permutations the result is lazy and computes wherever the caller computes it.

    Returns
    -------
    DataArray ``mi`` (x's other dims..., factor) in bits; with ``n_perm`` a Dataset with
    ``mi``, ``threshold`` (factor), ``significant`` and ``pvalue`` besides it. Attrs name
    the estimator, bias correction, sample count and permutations.
    """
    if dim not in x.dims:
        raise InputError(f"x has no sample dim {dim!r} (dims {x.dims})")
    ds = _factors(y, dim)
    _check_samples(x, ds, dim, "y")
    if cond is not None:
        _check_samples(x, cond, dim, "cond")
        return _conditional(x, ds, dim, cond, mvdim=mvdim, biascorrect=biascorrect, seed=seed)
    if mvdim is not None and mvdim not in x.dims:
        raise InputError(f"mvdim {mvdim!r} is not a dim of x (dims {x.dims})")
    names, cont, disc = _prepare_factors(ds, seed)
    n_factors = len(names)
    core = [mvdim, dim] if mvdim else [dim]
    x = x.transpose(..., *core)
    if isinstance(x.data, da.Array):
        x = x.chunk({c: -1 for c in core})
    attrs = {"units": "bits", "estimator": "gcmi (Gaussian copula; mi_gg / mi_model_gd)",
             "biascorrect": int(biascorrect), "n_samples": int(x.sizes[dim]), "sample_dim": dim,
             "discrete_factors": [names[p] for p, _ in disc], "seed": seed}
    if n_perm:
        if mvdim is not None and disc:
            raise InputError("permutation statistics of multivariate variables (mvdim) need continuous factors; "
                             f"{[names[p] for p, _ in disc]} are discrete")
        return _permutation_result(x, dim, names, cont, disc, n_perm, alpha, biascorrect, seed, attrs, scheduler,
                                   mvdim)
    mi = xr.apply_ufunc(
        _block_mi, x, input_core_dims=[core], output_core_dims=[["factor"]],
        kwargs=dict(cont=cont, disc=disc, n_factors=n_factors, mv=mvdim is not None, biascorrect=biascorrect,
                    seed=seed),
        dask="parallelized", output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"factor": n_factors}},
    ).assign_coords(factor=names)
    mi.name = "mi"
    mi.attrs.update(attrs)
    return mi


def _permutation_result(x: xr.DataArray, dim: str, names: list[str], cont: np.ndarray, disc: list, n_perm: int,
                        alpha: float, biascorrect: bool, seed: int, attrs: dict, scheduler: str | None,
                        mvdim: str | None = None) -> xr.Dataset:
    """MI with maximum-statistic thresholds, p-values and significance (computed now)."""
    perms = permutations(x.sizes[dim], n_perm, seed)
    d = x.sizes[mvdim] if mvdim else 1
    if scheduler and "://" in scheduler:
        from distributed import Client

        with Client(scheduler):
            mi_v, null_v = _mi_and_null(x, dim, cont, disc, len(names), perms, biascorrect, seed, d)
    else:
        with dask.config.set(scheduler=scheduler) if scheduler else contextlib.nullcontext():
            mi_v, null_v = _mi_and_null(x, dim, cont, disc, len(names), perms, biascorrect, seed, d)
    var_dims = [k for k in x.dims if k not in (dim, mvdim)]
    coords = {k: v for k, v in x.coords.items() if dim not in v.dims and (mvdim is None or mvdim not in v.dims)}
    mi = xr.DataArray(mi_v, dims=var_dims + ["factor"], coords=coords).assign_coords(factor=names)
    null = xr.DataArray(null_v, dims=("permutation", "factor"), coords={"factor": names})
    thr = xr.DataArray(threshold(null_v, alpha), dims="factor", coords={"factor": names})
    out = xr.Dataset({"mi": mi, "threshold": thr, "null_max": null})
    out["significant"] = out["mi"] > out["threshold"]
    out["pvalue"] = (mi.dims, pvalues(mi_v, null_v))
    out.attrs.update(attrs, n_perm=int(n_perm), alpha=float(alpha), correction="maximum statistic (FWER)")
    for v in ("mi", "threshold", "null_max"):
        out[v].attrs["units"] = "bits"
    return out


def _conditional(x: xr.DataArray, ds: xr.Dataset, dim: str, cond: xr.DataArray, *, mvdim: str | None,
                 biascorrect: bool, seed: int) -> xr.DataArray:
    """I(x; y | cond) for every variable and factor."""
    cname = str(cond.name or "cond")
    if is_discrete(cond):
        codes, values = encode_labels(cond.values)
        parts, weights = [], []
        for c in range(len(values)):
            idx = np.flatnonzero(codes == c)
            if idx.size < 3:
                continue
            part = mutual_information(x.isel({dim: idx}), ds.isel({dim: idx}), dim, mvdim=mvdim,
                                      biascorrect=biascorrect, seed=seed)
            parts.append(part)
            weights.append(idx.size)
        w = xr.DataArray(np.asarray(weights, float) / sum(weights), dims="cond_class")
        out = (xr.concat(parts, dim="cond_class") * w).sum("cond_class")
        out.attrs.update(parts[0].attrs, n_samples=int(x.sizes[dim]))
    else:
        # Chain rule on Gaussian estimates: I(x; y | z) = I([x, z]; y) - I(z; y).
        z = copnorm(np.asarray(cond.values, dtype=np.float64), seed=seed + 7919)
        xz = _with_cond(x, z, dim, mvdim)
        both = mutual_information(xz, ds, dim, mvdim="_xz", biascorrect=biascorrect, seed=seed)
        zonly = mutual_information(xr.DataArray(z[:, None], dims=(dim, "_xz")), ds, dim, mvdim="_xz",
                                   biascorrect=biascorrect, seed=seed)
        out = both - zonly.squeeze(drop=True)
        out.attrs.update(both.attrs)
    out.name = "mi"
    out.attrs["conditioned_on"] = cname
    out.attrs["units"] = "bits"
    return out


def _with_cond(x: xr.DataArray, z: np.ndarray, dim: str, mvdim: str | None) -> xr.DataArray:
    """``x`` with the (copula-normalised) conditioning variable appended along a multivariate dim ``_xz``."""
    zz = xr.DataArray(z, dims=dim)
    if mvdim is None:
        x = x.expand_dims("_xz", axis=-1)
    else:
        x = x.rename({mvdim: "_xz"})
    zb = zz.broadcast_like(x.isel(_xz=0, drop=True)).expand_dims("_xz", axis=-1)
    if isinstance(x.data, da.Array):
        zb = zb.chunk(dict(x.isel(_xz=0, drop=True).chunksizes))
    return xr.concat([x.drop_vars("_xz", errors="ignore"), zb], dim="_xz")


__all__ = ["mutual_information", "InputError", "is_discrete"]
