"""Time the MI engine against frites on the same data, in the same run.

    pip install frites   # (the `bench` extra)
    python benchmarks/mi.py [--threads 2] [--n 10000] [--perms 1000] [--full]

Workloads (n samples, all pairs):
  1. 2,000 ReLU-like float32 units x 8 factors (5 continuous; discrete with 100, 2 and 7 classes);
  2. 4,096 uint8 pixels x the same 8 factors (heavy ties);
  3. 4,096 pixels x 512 units (2.1 million MI(pixel; unit) pairs);
  4. maximum-statistic permutations (--perms) for workload 1.
frites runs its vectorised nd functions (copnorm_nd, mi_nd_gg, mi_model_nd_gd); gcmi's
numba batch path (copnorm_slice_numba, info_cc_slice_numba, info_c1d_slice_numba) runs too
when the package `gcmi` (github.com/robince/gcmi, not on PyPI) is importable.
In workload 3 frites needs a Python loop over units; without --full it runs 16 units
and the time is scaled to 512 (printed as "extrapolated").
Prints seconds, the speed-up and the largest absolute difference in bits.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import xarray as xr

from infodissect.info import copnorm, mi_gg_pairs
from infodissect.info.xr import mutual_information


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, xr.Dataset, np.ndarray]:
    """ReLU-like units (n, 2000), uint8 pixels (n, 4096), 8 factors, and units (n, 512)."""
    rng = np.random.default_rng(seed)
    cont = rng.normal(size=(n, 5))
    disc = [rng.integers(0, k, n) for k in (100, 2, 7)]
    w = rng.normal(size=(5, 2000)) * 0.3
    drive = cont @ w + 0.2 * disc[1][:, None] + 0.05 * (disc[2][:, None] - 3)
    # float32, as the activation stage stores them; ~60% exact zeros
    units = np.maximum(drive + rng.normal(size=(n, 2000)) - 0.5, 0.0).astype(np.float32)
    pix = np.clip(128 + 40 * (cont[:, :1] @ rng.normal(size=(1, 4096))) * 0.3 + rng.normal(scale=30, size=(n, 4096)),
                  0, 255).astype(np.uint8)
    factors = xr.Dataset({f"c{i}": ("sample", cont[:, i]) for i in range(5)}
                         | {f"d{k}": ("sample", d) for k, d in zip((100, 2, 7), disc)})
    return units, pix, factors, units[:, :512]


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def frites_factors(x: np.ndarray, factors: xr.Dataset) -> np.ndarray:
    """frites' vectorised path: x (n, P) against every factor: (P, Q)."""
    from frites.core import copnorm_nd, mi_model_nd_gd, mi_nd_gg

    xc = copnorm_nd(np.ascontiguousarray(x.T, dtype=np.float64), axis=-1)[:, None, :]  # (P, 1, n)
    out = []
    for name in factors.data_vars:
        v = factors[name].values
        if v.dtype.kind in "iub":
            out.append(mi_model_nd_gd(xc, v, traxis=-1, mvaxis=-2))
        else:
            yc = copnorm_nd(v.astype(np.float64), axis=-1)
            out.append(mi_nd_gg(xc, np.broadcast_to(yc, xc.shape), traxis=-1, mvaxis=-2))
    return np.stack(out, -1)


def ours_factors(x: np.ndarray, factors: xr.Dataset) -> np.ndarray:
    """infodissect's labelled front on in-memory data: (P, Q)."""
    return mutual_information(xr.DataArray(x, dims=("sample", "unit")), factors).values


def frites_pairs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """frites: every column of x (n, P) against every column of y (n, Q), a loop over y's columns."""
    from frites.core import copnorm_nd, mi_nd_gg

    xc = copnorm_nd(np.ascontiguousarray(x.T, dtype=np.float64), axis=-1)[:, None, :]
    yc = copnorm_nd(np.ascontiguousarray(y.T, dtype=np.float64), axis=-1)
    return np.stack([mi_nd_gg(xc, np.broadcast_to(yc[q], xc.shape), traxis=-1, mvaxis=-2) for q in range(y.shape[1])], -1)


def gcmi_factors(x: np.ndarray, factors: xr.Dataset) -> np.ndarray:
    """gcmi's numba batch path (robince/gcmi, python/src/gcmi/_numba.py): (P, Q)."""
    from gcmi._numba import (_shared_continuous_stats, copnorm_slice_numba, info_c1d_slice_numba,
                             info_cc_slice_numba)

    xc = copnorm_slice_numba(np.ascontiguousarray(x.T, dtype=np.float64))
    out = []
    for name in factors.data_vars:
        v = factors[name].values
        if v.dtype.kind in "iub":
            out.append(info_c1d_slice_numba(xc, v.astype(np.int64), np.bincount(v).astype(np.int64), True))
        else:
            yc = copnorm_slice_numba(v.astype(np.float64)[None])
            cov_y, hy = _shared_continuous_stats(yc, True, False)
            out.append(info_cc_slice_numba(xc[:, None, :], yc, cov_y, hy, True, False))
    return np.stack(out, -1)


def have_gcmi() -> bool:
    try:
        import gcmi._numba  # noqa: F401
    except ImportError:
        return False
    return True


def report(name: str, t_frites: float, t_ours: float, diff: float | None, note: str = "") -> None:
    d = "" if diff is None else f", max |diff| {diff:.2e} bits"
    print(f"{name}: frites {t_frites:7.2f} s{note}, infodissect {t_ours:6.2f} s, "
          f"speed-up {t_frites / t_ours:6.1f}x{d}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--perms", type=int, default=1000)
    ap.add_argument("--full", action="store_true", help="run frites on all 512 units in workload 3")
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    units, pix, factors, units512 = data(a.n)
    print(f"n = {a.n}, {a.threads} threads; units {units.shape[1]} ({(units == 0).mean():.0%} zeros), "
          f"pixels {pix.shape[1]} (uint8), factors {list(factors.data_vars)}", flush=True)

    # Warm up: compiled kernels load from Numba's cache (or compile, the first time).
    ours_factors(units[:, :8], factors)
    ours_factors(pix[:, :8], factors)
    t_cop, _ = timed(copnorm, units)
    tf, rf = timed(frites_factors, units, factors)
    to, ro = timed(ours_factors, units, factors)
    # frites breaks no ties (argsort order), so tied units differ; compare on the tie-free factors' columns.
    report("1. 2000 units x 8 factors", tf, to, None)
    print(f"   copula normalisation alone {t_cop:.2f} s; infodissect / copnorm = {to / t_cop:.2f}", flush=True)
    if have_gcmi():
        gcmi_factors(units[:, :8], factors)
        tg, _ = timed(gcmi_factors, units, factors)
        print(f"   gcmi numba batch path {tg:.2f} s; speed-up over it {tg / to:.1f}x", flush=True)
    else:
        print("   gcmi (robince/gcmi, numba batch path) not installed: not timed", flush=True)
    dense = np.ascontiguousarray(units + np.random.default_rng(1).normal(scale=1e-6, size=units.shape))
    _, rf_dense = timed(frites_factors, dense[:, :200], factors)
    _, ro_dense = timed(ours_factors, dense[:, :200], factors)
    print(f"   agreement on tie-free data (200 units): max |diff| {np.abs(rf_dense - ro_dense).max():.2e} bits",
          flush=True)

    tf, rf = timed(frites_factors, pix, factors)
    to, ro = timed(ours_factors, pix, factors)
    report("2. 4096 uint8 pixels x 8 factors", tf, to, None)
    if have_gcmi():
        tg, _ = timed(gcmi_factors, pix, factors)
        print(f"   gcmi numba batch path {tg:.2f} s; speed-up over it {tg / to:.1f}x", flush=True)

    sub = 512 if a.full else 16
    tf, rf = timed(frites_pairs, pix, units512[:, :sub])
    to, ro = timed(lambda: mi_gg_pairs(copnorm(pix), copnorm(units512)))
    report("3. 4096 pixels x 512 units", tf * 512 / sub, to, None, "" if a.full else " (extrapolated from 16 units)")

    t0 = time.perf_counter()
    res = mutual_information(xr.DataArray(units, dims=("sample", "unit")), factors, n_perm=a.perms)
    tp = time.perf_counter() - t0
    print(f"4. {a.perms} permutations, maximum statistic, 2000 units x 8 factors: {tp:.1f} s; "
          f"{int(res.significant.sum())} significant pairs; thresholds {np.round(res.threshold.values, 4).tolist()}",
          flush=True)


if __name__ == "__main__":
    main()
