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
import warnings
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import torch
import xarray as xr

from ..memory import release_memory
from .copula import copnorm, normal_scores
from .estimators import (LN2, _dterm, _psi_sum, _warn_nan, encode_labels, mi_from_correlation, mi_gg, mi_gg_pairs,
                         mi_model_gd, standardize)
from .conditional import conditional_rows, permutations_within, prepare_strata, strata_of
from .stats import null_max_gd, null_max_gg, permutations, pvalues, threshold


class InputError(ValueError):
    """The inputs of :func:`mutual_information` do not fit together."""


ESTIMATORS = {"gcmi": "gcmi (Gaussian copula; mi_gg / mi_model_gd)",
              "mixture": "gcmi mixture (Gaussian copula; mi_gg / gcmi_mixture_cd)"}


def is_discrete(v: xr.DataArray) -> bool:
    """A factor is discrete when its dtype is integer, boolean or text, or its attrs say ``kind: categorical``."""
    kind = v.attrs.get("kind")
    if kind is not None:
        return kind in ("categorical", "discrete")
    return v.dtype.kind in "iubUOT"


def _factors(y: xr.DataArray | xr.Dataset, dim: str) -> xr.Dataset:
    """``y`` as a Dataset of 1-D factors along ``dim``."""
    if not isinstance(y, (xr.DataArray, xr.Dataset)):
        raise InputError(f"y is a {type(y).__name__}; pass an xarray Dataset of factors (or one DataArray)")
    ds = y.to_dataset(name=y.name or "factor") if isinstance(y, xr.DataArray) else y
    if not ds.data_vars:
        raise InputError("y holds no factors (an empty Dataset)")
    for name, v in ds.data_vars.items():
        if v.dims != (dim,):
            raise InputError(f"factor {name!r} has dims {v.dims}; factors must be 1-D along {dim!r}")
    return ds


def _missing(name: str, v: np.ndarray, what: str = "factor") -> None:
    """Raise naming ``what`` ``name`` when it holds None or NaN (a missing value is not a class or a number)."""
    bad = np.array([e is None or (isinstance(e, float) and e != e) for e in v], bool) if v.dtype.kind == "O" else (
        np.isnan(v) if v.dtype.kind in "fc" else np.zeros(len(v), bool))
    if bad.any():
        raise InputError(f"{what} {name!r} has missing values (None or NaN) at {int(bad.sum())} sample(s), first at "
                         f"position {int(np.flatnonzero(bad)[0])}; drop or fill those samples first")


def _factor_arrays(ds: xr.Dataset) -> tuple[list[str], np.ndarray, list[tuple[int, np.ndarray]]]:
    """Names, raw continuous factors (n, Qc) float64 and (position, codes) of the discrete ones, checked."""
    names = [str(k) for k in ds.data_vars]
    cont, disc = [], []
    for i, name in enumerate(names):
        v = ds[name]
        values = np.asarray(v.values)
        _missing(name, values)
        if is_discrete(v):
            disc.append((i, encode_labels(values)[0]))
        else:
            if values.dtype.kind not in "fiub":
                raise InputError(f"factor {name!r} of dtype {values.dtype} is neither numeric nor marked "
                                 "categorical (attrs kind: categorical)")
            cont.append(values.astype(np.float64))
    c = np.stack(cont, 1) if cont else np.zeros((ds.sizes[next(iter(ds.dims))], 0))
    return names, c, disc


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
    names, raw, disc = _factor_arrays(ds)
    cont = [copnorm(raw[:, j], seed=seed + 1 + i) for j, i in enumerate(_continuous(disc, len(names)))]
    c = np.stack(cont, 1) if cont else raw
    return names, c, disc


def _copnorm_block(block: np.ndarray, ids: np.ndarray, seed: int) -> np.ndarray:
    """Copula-normalised float64 rows (P, n) of a block (*vars, n); ``ids`` (*vars) the variables' global ids."""
    n = block.shape[-1]
    return copnorm(block.reshape(-1, n), seed=seed, axis=-1, dtype=torch.float64,
                   ids=np.asarray(ids, np.int64).reshape(-1))


def constant_rows(rows: np.ndarray, d: int = 1) -> np.ndarray:
    """Per variable of rows (P*d, n) (d rows each), whether every one of its rows is constant (all values equal)."""
    if rows.shape[-1] == 0:
        return np.zeros(rows.shape[0] // d, bool)
    return (rows == rows[:, :1]).all(1).reshape(-1, d).all(1)


def _warn_constant(count: int, total: int) -> None:
    if count:
        warnings.warn(f"{count} of {total} variable(s) are constant (a dead unit, a flat pixel): their MI is 0, "
                      "and they take no part in the permutation maxima", RuntimeWarning, stacklevel=3)


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


def _live_rows_mi(rows: np.ndarray, const: np.ndarray, cont: np.ndarray, disc: list[tuple[int, np.ndarray]],
                  n_factors: int, d: int, biascorrect: bool) -> np.ndarray:
    """:func:`_rows_mi` of the variables that are not constant (``const`` (P, 1)); the constant ones get 0."""
    live = np.flatnonzero(~const.reshape(-1))
    if len(live) == len(const):
        return _rows_mi(rows, cont, disc, n_factors, d, biascorrect)
    out = np.zeros((len(const), n_factors))
    out[live] = _rows_mi(rows.reshape(-1, d, rows.shape[-1])[live].reshape(-1, rows.shape[-1]), cont, disc,
                         n_factors, d, biascorrect)
    return out


def _block_mi(block: np.ndarray, ids: np.ndarray, cont: np.ndarray, disc: list[tuple[int, np.ndarray]],
              n_factors: int, mv: bool, biascorrect: bool, seed: int, estimator: str = "gcmi") -> np.ndarray:
    """MI of every variable of a block (*vars[, d], n) with every factor: (*vars, n_factors)."""
    shape = block.shape[:-2] if mv else block.shape[:-1]
    d = block.shape[-2] if mv else 1
    raw = block.reshape(-1, block.shape[-1])
    const = constant_rows(raw, d)
    live = np.flatnonzero(~const)  # constant variables are not computed (no NaN warnings for them): MI 0
    ids = np.asarray(ids, np.int64).reshape(-1)
    if len(live) < len(const):  # (gathered only when needed: a copy of the block)
        rows = np.repeat(live * d, d) + np.tile(np.arange(d), len(live))
        raw, ids = raw[rows], ids[rows]
    out = np.zeros((len(const), n_factors))
    out[live] = _rows_mi(_copnorm_block(raw, ids, seed), cont, disc, n_factors, d, biascorrect)
    if estimator == "mixture" and disc and live.size:
        from .estimators import gcmi_mixture_cd

        x = raw.reshape(-1, d, raw.shape[-1]).transpose(2, 0, 1)  # (n, P, d)
        for q, codes in disc:
            out[live, q] = gcmi_mixture_cd(x if d > 1 else x[..., 0], codes, seed=seed, ids=ids[::d])
    _warn_constant(int(const.sum()), len(const))
    release_memory()
    return out.reshape(shape + (n_factors,))


def _rows_null(rows: np.ndarray, const: np.ndarray, cont: np.ndarray, disc: list[tuple[int, np.ndarray]],
               n_factors: int, perms: np.ndarray, biascorrect: bool, d: int = 1) -> np.ndarray:
    """Null maxima over copula-normalised rows (P*d, n), d rows per variable, constant variables left out:
    (1, n_perm, n_factors)."""
    rows = np.where(np.repeat(const.reshape(-1), d)[:, None], np.nan, rows)  # never sets the maximum
    x = rows.T if d == 1 else rows.T.reshape(rows.shape[1], -1, d)  # (n, P) or (n, P, d)
    out = np.full((perms.shape[0], n_factors), -np.inf)
    cont_pos = _continuous(disc, n_factors)
    if cont_pos:  # (no warnings.catch_warnings here: it is not thread-safe, and this runs in Dask's threads)
        out[:, cont_pos] = null_max_gg(x, cont, perms, biascorrect)
    for q, codes in disc:
        out[:, q] = null_max_gd(x, codes, perms, biascorrect)
    release_memory()
    return out[None]


def _dask_rows(x: xr.DataArray, dim: str, d: int) -> da.Array:
    """``x`` (*vars[, d], n) as dask rows (m, n), each chunk whole variables."""
    n = x.sizes[dim]
    if isinstance(x.data, da.Array):
        return x.data.reshape(-1, n, merge_chunks=True)
    flat = np.asarray(x.data).reshape(-1, n)
    per_chunk = max(1, min(len(flat) // d, (64 << 20) // (8 * n * d))) * d  # whole variables per chunk
    return da.from_array(flat, chunks=(per_chunk, n))


def _mi_and_null(x: xr.DataArray, dim: str, cont: np.ndarray, disc: list, n_factors: int, perms: np.ndarray,
                 biascorrect: bool, seed: int, d: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MI (*vars, n_factors), null maxima (n_perm, n_factors) and constant variables (*vars), each chunk
    copula-normalised once.

    With ``d`` > 1 the last variable dim of ``x`` holds the d components of each (multivariate) variable.
    """
    rows = _dask_rows(x, dim, d)
    ids = da.arange(rows.shape[0], chunks=rows.chunks[0])[:, None]
    cop = da.map_blocks(_copnorm_block, rows, ids, seed, dtype=np.float64)
    var_chunks = tuple(c // d for c in rows.chunks[0])
    const = rows.map_blocks(constant_rows, d, chunks=(var_chunks,), drop_axis=1, dtype=bool)
    mi = da.map_blocks(_live_rows_mi, cop, const[:, None], cont, disc, n_factors, d, biascorrect,
                       chunks=(var_chunks, (n_factors,)), dtype=np.float64)
    null = da.map_blocks(_rows_null, cop, const[:, None], cont, disc, n_factors, perms, biascorrect, d, new_axis=2,
                         dtype=np.float64, chunks=((1,) * rows.numblocks[0], (perms.shape[0],), (n_factors,)))
    mi_v, null_v, const_v = dask.compute(mi, null.max(axis=0), const)
    shape = x.shape[:-1 if d == 1 else -2]
    return mi_v.reshape(shape + (n_factors,)), null_v, const_v.reshape(shape)


def _check_arguments(x: xr.DataArray, dim: str, mvdim: str | None, n_perm: int, alpha: float, estimator: str) -> None:
    """Refuse bad arguments by name before any work."""
    if not isinstance(x, xr.DataArray):
        raise InputError(f"x is a {type(x).__name__}; pass an xarray DataArray")
    if dim not in x.dims:
        raise InputError(f"x has no sample dim {dim!r} (dims {x.dims})")
    if x.sizes[dim] < 3:
        raise InputError(f"x has {x.sizes[dim]} sample(s) along {dim!r}; MI needs at least 3")
    if x.dtype.kind not in "fiub":
        raise InputError(f"x has dtype {x.dtype}; MI needs numbers")
    if mvdim is not None and (mvdim not in x.dims or mvdim == dim):
        raise InputError(f"mvdim {mvdim!r} is not a variable dim of x (dims {x.dims}, samples along {dim!r})")
    if isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer)) or n_perm < 0:
        raise InputError(f"n_perm={n_perm!r}: the number of permutations must be an integer >= 0 "
                         "(0: no permutation statistics)")
    if not isinstance(alpha, (float, int, np.floating)) or not 0.0 < float(alpha) < 1.0:
        raise InputError(f"alpha={alpha!r}: the family-wise error rate must lie strictly between 0 and 1")
    if estimator not in ESTIMATORS:
        raise InputError(f"estimator={estimator!r}: one of {', '.join(map(repr, ESTIMATORS))}")


def mutual_information(
    x: xr.DataArray,
    y: xr.DataArray | xr.Dataset,
    dim: str = "sample",
    cond: xr.DataArray | xr.Dataset | None = None,
    *,
    mvdim: str | None = None,
    estimator: Literal["gcmi", "mixture"] = "gcmi",
    biascorrect: bool = True,
    n_perm: int = 0,
    alpha: float = 0.05,
    seed: int = 0,
    scheduler: str | None = None,
) -> xr.DataArray | xr.Dataset:
    """Gaussian-copula MI (bits) between every variable of ``x`` and every factor of ``y``.

    Parameters
    ----------
    x : DataArray with dim ``dim`` (samples) and any others (the variables); NumPy or Dask
        backed; any real dtype (float16 to float64, integers).
    y : Dataset of 1-D factors along ``dim`` (or one DataArray). Integer, boolean or text
        factors (or attrs ``kind: categorical``) are discrete (:func:`mi_model_gd`); floats are
        continuous (:func:`mi_gg_pairs`), each copula-normalised once. A missing value (NaN,
        None) is an error naming the factor.
    cond : optional condition: MI is then I(x; y | cond). A 1-D DataArray along ``dim``, a 2-D one
        (``dim`` and one more: a multivariate continuous condition), or a Dataset of 1-D
        variables (several conditions at once). Discrete conditions define strata (their joint
        classes): x and the factors are copula-normalised within each, and the result is the
        strata's MI weighted by their share of the samples (gcmi's ``gccmi_ccd``); continuous
        ones are conditioned on by the Gaussian chain rule (``cmi_ggg``). See
        :mod:`.conditional`, which also describes the permutation scheme.
    mvdim : a dim of ``x`` whose values form one multivariate variable (e.g. ``coord`` of a
        vertex's 3-D displacement); it is not in the result.
    estimator : for discrete factors, ``"gcmi"`` (the Gaussian model of gcmi's
        ``gcmi_model_cd``, fast) or ``"mixture"`` (gcmi's ``gcmi_mixture_cd``: x
        copula-normalised within each class, the mixture's entropy by the unscented transform;
        no permutation statistics, no condition). Continuous factors always use ``mi_gg``.
    biascorrect : apply the reference's bias correction.
    n_perm : permutations for maximum-statistic family-wise correction (0 = none); given
        ``cond``, samples are permuted within its strata.
    alpha : family-wise error rate of the threshold, in (0, 1).
    seed : seeds tie-breaking and permutations. Ties are broken at random per variable,
        keyed by its position in ``x`` (so two identical variables are broken
        independently) and not by the chunking.
    scheduler : where the permutation path computes: None uses the active Dask scheduler
        (a ``distributed.Client`` if the caller made one, else the local threaded one);
        ``"tcp://host:port"`` connects to a running distributed scheduler. Without
        permutations the result is lazy and computes wherever the caller computes it.

    Returns
    -------
    DataArray ``mi`` (x's other dims..., factor) in bits; with ``n_perm`` a Dataset with
    ``mi``, ``threshold`` (factor), ``significant``, ``pvalue`` and ``constant`` besides it.
    Attrs name the estimator, bias correction, sample count and permutations.

    Notes
    -----
    A constant variable (all samples equal: a dead unit, a flat pixel) carries no
    information: its MI is exactly 0, it is never significant and takes no part in the
    permutation maxima; a RuntimeWarning counts them (once per call with ``n_perm``, once
    per chunk for a lazy result). A variable holding NaN gives NaN, with a warning.
    """
    _check_arguments(x, dim, mvdim, n_perm, alpha, estimator)
    ds = _factors(y, dim)
    _check_samples(x, ds, dim, "y")
    core = [mvdim, dim] if mvdim else [dim]
    x = x.transpose(..., *core)
    if isinstance(x.data, da.Array):
        x = x.chunk({c: -1 for c in core})
    if cond is not None:
        if estimator != "gcmi":
            raise InputError(f"estimator={estimator!r} has no conditional form; use estimator='gcmi' with cond")
        return _conditional(x, ds, dim, cond, mvdim=mvdim, biascorrect=biascorrect, seed=seed, n_perm=n_perm,
                            alpha=alpha, scheduler=scheduler)
    names, cont, disc = _prepare_factors(ds, seed)
    n_factors = len(names)
    attrs = {"units": "bits", "estimator": ESTIMATORS[estimator], "biascorrect": int(biascorrect),
             "n_samples": int(x.sizes[dim]), "sample_dim": dim, "discrete_factors": [names[p] for p, _ in disc],
             "seed": seed}
    if n_perm:
        if mvdim is not None and disc:
            raise InputError("permutation statistics of multivariate variables (mvdim) need continuous factors; "
                             f"{[names[p] for p, _ in disc]} are discrete")
        if estimator == "mixture" and disc:
            raise InputError("estimator='mixture' has no permutation statistics; use estimator='gcmi' with n_perm")
        perms = permutations(x.sizes[dim], n_perm, seed)
        d = x.sizes[mvdim] if mvdim else 1
        with _scheduler(scheduler):
            mi_v, null_v, const_v = _mi_and_null(x, dim, cont, disc, n_factors, perms, biascorrect, seed, d)
        _warn_constant(int(const_v.sum()), const_v.size)
        return _result_dataset(x, dim, mvdim, names, mi_v, null_v, const_v, alpha, attrs)
    ids = xr.DataArray(np.arange(int(np.prod([x.sizes[k] for k in x.dims if k != dim]))).reshape(
        [x.sizes[k] for k in x.dims if k not in core] + ([x.sizes[mvdim]] if mvdim else [])),
        dims=[k for k in x.dims if k not in core] + ([mvdim] if mvdim else []))
    if isinstance(x.data, da.Array):
        ids = ids.chunk({k: v for k, v in x.chunksizes.items() if k in ids.dims})
    mi = xr.apply_ufunc(
        _block_mi, x, ids, input_core_dims=[core, core[:-1]], output_core_dims=[["factor"]],
        kwargs=dict(cont=cont, disc=disc, n_factors=n_factors, mv=mvdim is not None, biascorrect=biascorrect,
                    seed=seed, estimator=estimator),
        dask="parallelized", output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"factor": n_factors}},
    ).assign_coords(factor=names)
    mi.name = "mi"
    mi.attrs.update(attrs)
    return mi


@contextlib.contextmanager
def _scheduler(scheduler: str | None) -> Any:
    """The Dask scheduler the eager paths compute on (a ``tcp://`` address connects a client)."""
    if scheduler and "://" in scheduler:
        from distributed import Client

        with Client(scheduler):
            yield
    else:
        with dask.config.set(scheduler=scheduler) if scheduler else contextlib.nullcontext():
            yield


def _result_dataset(x: xr.DataArray, dim: str, mvdim: str | None, names: list[str], mi_v: np.ndarray,
                    null_v: np.ndarray, const_v: np.ndarray, alpha: float, attrs: dict) -> xr.Dataset:
    """MI with maximum-statistic thresholds, p-values, significance and the constant variables."""
    var_dims = [k for k in x.dims if k not in (dim, mvdim)]
    coords = {k: v for k, v in x.coords.items() if dim not in v.dims and (mvdim is None or mvdim not in v.dims)}
    mi = xr.DataArray(mi_v, dims=var_dims + ["factor"], coords=coords).assign_coords(factor=names)
    null = xr.DataArray(null_v, dims=("permutation", "factor"), coords={"factor": names})
    thr = xr.DataArray(threshold(null_v, alpha), dims="factor", coords={"factor": names})
    out = xr.Dataset({"mi": mi, "threshold": thr, "null_max": null})
    constant = xr.DataArray(const_v, dims=var_dims, coords={k: v for k, v in coords.items() if k != "factor"})
    out["significant"] = (out["mi"] > out["threshold"]) & ~constant
    out["pvalue"] = (mi.dims, np.where(const_v[..., None], 1.0, pvalues(mi_v, null_v)))
    out["constant"] = constant
    out["constant"].attrs["description"] = "all samples equal (MI 0, left out of the permutation maxima)"
    out.attrs.update(attrs, n_perm=int(null_v.shape[0]), alpha=float(alpha), correction="maximum statistic (FWER)")
    for v in ("mi", "threshold", "null_max"):
        out[v].attrs["units"] = "bits"
    return out


def _condition(cond: xr.DataArray | xr.Dataset, x: xr.DataArray, dim: str
               ) -> tuple[str, list[np.ndarray], np.ndarray | None]:
    """The condition's name, its discrete variables' codes and its continuous part (n, dz) or None, checked."""
    if isinstance(cond, xr.Dataset):
        if not cond.data_vars:
            raise InputError("cond holds no variables (an empty Dataset)")
        items = [(str(k), v) for k, v in cond.data_vars.items()]
    elif isinstance(cond, xr.DataArray):
        items = [(str(cond.name or "cond"), cond)]
    else:
        raise InputError(f"cond is a {type(cond).__name__}; pass a DataArray or a Dataset along {dim!r}")
    disc, cont = [], []
    for name, v in items:
        if dim not in v.dims or v.ndim > 2 or (v.ndim == 2 and isinstance(cond, xr.Dataset)):
            raise InputError(f"cond {name!r} has dims {v.dims}; a condition is 1-D along {dim!r}, or one 2-D "
                             f"DataArray ({dim!r} and one more dim: a multivariate continuous condition)")
        _check_samples(x, v, dim, f"cond {name!r}")
        v = v.transpose(dim, ...)
        values = np.asarray(v.values)
        if v.ndim == 2:
            if is_discrete(v):
                raise InputError(f"cond {name!r} is 2-D and discrete; pass discrete conditions as a Dataset of "
                                 "1-D variables")
            if np.isnan(values.astype(np.float64)).any():
                raise InputError(f"cond {name!r} has missing values (NaN); drop or fill those samples first")
            cont.append(values.astype(np.float64))
            continue
        _missing(name, values, "cond")
        if is_discrete(v):
            disc.append(encode_labels(values)[0])
        else:
            cont.append(values.astype(np.float64)[:, None])
    label = ", ".join(name for name, _ in items)
    return label, disc, (np.concatenate(cont, 1) if cont else None)


def _cond_block(rows: np.ndarray, ids: np.ndarray, strata: list, cont_pos: list[int], disc_pos: list[int], d: int,
                biascorrect: bool, seed: int) -> np.ndarray:
    """Conditional MI (P, Q) of a block of raw rows (lazy path; warns of its constant variables)."""
    mi, _, const = conditional_rows(rows, strata, cont_pos, disc_pos, d, biascorrect, seed, ids.reshape(-1))
    _warn_constant(int(const.sum()), len(const))
    release_memory()
    return mi


def _conditional(x: xr.DataArray, ds: xr.Dataset, dim: str, cond: xr.DataArray | xr.Dataset, *,
                 mvdim: str | None, biascorrect: bool, seed: int, n_perm: int, alpha: float,
                 scheduler: str | None) -> xr.DataArray | xr.Dataset:
    """I(x; y | cond) for every variable and factor (:mod:`.conditional`), lazily or with permutations."""
    label, cdisc, z = _condition(cond, x, dim)
    names, raw, disc = _factor_arrays(ds)
    cont_pos, disc_pos = _continuous(disc, len(names)), [p for p, _ in disc]
    n, d = x.sizes[dim], (x.sizes[mvdim] if mvdim else 1)
    dz = 0 if z is None else z.shape[1]
    if n_perm and z is not None and disc:
        raise InputError(f"permutation statistics of discrete factors {[names[p] for p in disc_pos]} given a "
                         f"continuous condition ({label}) have no exact scheme; bin the condition into a discrete "
                         "one, or leave out n_perm")
    if n_perm and mvdim is not None and disc:
        raise InputError("permutation statistics of multivariate variables (mvdim) need continuous factors; "
                         f"{[names[p] for p in disc_pos]} are discrete")
    codes = strata_of(cdisc, n)
    try:
        strata = prepare_strata(codes, raw, [c for _, c in disc], z, seed, min_size=d + dz + 1)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    attrs = {"units": "bits", "estimator": "gccmi (Gaussian copula within the condition's strata; cmi_ggg)",
             "biascorrect": int(biascorrect), "n_samples": int(n), "sample_dim": dim,
             "discrete_factors": [names[p] for p in disc_pos], "seed": seed, "conditioned_on": label,
             "strata": len(strata)}
    rows = _dask_rows(x, dim, d)
    ids = da.arange(rows.shape[0], chunks=rows.chunks[0])[:, None]
    var_dims = [k for k in x.dims if k not in (dim, mvdim)]
    shape = tuple(x.sizes[k] for k in var_dims)
    if n_perm:
        perms = permutations_within(codes, n_perm, seed)
        parts = [dask.delayed(conditional_rows)(r, strata, cont_pos, disc_pos, d, biascorrect, seed,
                                                dask.delayed(np.ravel)(i), perms)
                 for r, i in zip(rows.to_delayed().ravel(), ids.to_delayed().ravel())]
        with _scheduler(scheduler):
            done = dask.compute(*parts)
        mi_v = np.concatenate([m for m, _, _ in done]).reshape(shape + (len(names),))
        null_v = np.max([nl for _, nl, _ in done], axis=0)
        const_v = np.concatenate([c for _, _, c in done]).reshape(shape)
        _warn_constant(int(const_v.sum()), const_v.size)
        return _result_dataset(x, dim, mvdim, names, mi_v, null_v, const_v, alpha, attrs)
    var_chunks = tuple(c // d for c in rows.chunks[0])
    mi = da.map_blocks(_cond_block, rows, ids, strata, cont_pos, disc_pos, d, biascorrect, seed,
                       chunks=(var_chunks, (len(names),)), dtype=np.float64)
    coords = {k: v for k, v in x.coords.items() if dim not in v.dims and (mvdim is None or mvdim not in v.dims)}
    out = xr.DataArray(mi.reshape(shape + (len(names),)), dims=var_dims + ["factor"], coords=coords,
                       name="mi").assign_coords(factor=names)
    if not isinstance(x.data, da.Array):
        out = out.compute()
    out.attrs.update(attrs)
    return out


__all__ = ["mutual_information", "InputError", "is_discrete", "ESTIMATORS"]
