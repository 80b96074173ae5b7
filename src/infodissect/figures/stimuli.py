"""Figures of the stimulus stage: factor sweeps, a gallery of identities and a sheet of large portraits."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from ..faces.factors import FACTORS  # noqa: E402


def _value_label(factor: str, value: object) -> str:
    if FACTORS[factor].kind == "categorical":
        return str(value)
    unit = FACTORS[factor].unit
    v = float(value)
    text = f"{v:.0f}" if abs(v) >= 10 else f"{v:.2f}"
    return f"{text} {unit}" if unit in ("deg", "years") else text


def _strings(da: xr.DataArray) -> np.ndarray:
    return np.asarray([str(v) for v in da.values.tolist()], dtype=object)


def _show(ax: plt.Axes, image: np.ndarray) -> None:
    ax.imshow(image if image.shape[-1] == 3 else image[..., 0], cmap=None if image.shape[-1] == 3 else "gray",
              vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def factor_sweeps(sweeps: xr.Dataset, out: str | Path, identity: int | None = None) -> None:
    """One row per factor, columns along its sweep, for one identity of a sweep set."""
    ident = int(sweeps["identity"].values[0]) if identity is None else identity
    ds = sweeps.isel(sample=np.flatnonzero(sweeps["identity"].values == ident)).load()
    factors = list(dict.fromkeys(_strings(ds["sweep_factor"])))
    ncol = max(int((_strings(ds["sweep_factor"]) == f).sum()) for f in factors)
    fig, axes = plt.subplots(len(factors), ncol, figsize=(1.15 * ncol + 1.6, 1.2 * len(factors)), squeeze=False)
    for r, f in enumerate(factors):
        sel = np.flatnonzero(_strings(ds["sweep_factor"]) == f)
        for c in range(ncol):
            ax = axes[r, c]
            if c >= len(sel):
                ax.axis("off")
                continue
            i = sel[c]
            _show(ax, ds["image"].values[i])
            ax.set_title(_value_label(f, ds[f].values[i]), fontsize=7, pad=2)
        unit = FACTORS[f].unit
        axes[r, 0].set_ylabel(f + (f"\n({unit})" if unit else ""), fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"Each generative factor swept around a neutral face (identity {ident}, {ds.sizes['y']} px)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _identity_label(ds: xr.Dataset, k: int) -> str:
    return (f"id {int(ds['identity'].values[k])}: {ds['gender'].values[k]}, {ds['ethnicity'].values[k]}, "
            f"{float(ds['age'].values[k]):.0f} y, {ds['hair_style'].values[k]} hair")


def identity_gallery(portraits: xr.Dataset, out: str | Path, count: int = 16) -> None:
    """A grid of identities at neutral pose, expression and light."""
    n = min(count, portraits.sizes["sample"])
    portraits = portraits.isel(sample=slice(0, n)).load()
    ncol = int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.9 * ncol, 2.1 * nrow), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        _show(ax, portraits["image"].values[k])
        ax.set_title(_identity_label(portraits, k), fontsize=6)
    res = portraits.sizes["y"]
    fig.suptitle(f"Random identities (neutral pose, expression and light; {res} px)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def portrait_sheet(portraits: xr.Dataset, out: str | Path, count: int = 8) -> None:
    """Large portraits, each shown at its native resolution (one image pixel per figure pixel)."""
    n = min(count, portraits.sizes["sample"])
    portraits = portraits.isel(sample=slice(0, n)).load()
    res = portraits.sizes["y"]
    ncol = min(n, 4)
    nrow = int(np.ceil(n / ncol))
    dpi = 100
    side, gap, title = res / dpi, 0.15, 0.35  # inches: image, margin, title band above each image
    width, height = ncol * (side + gap) + gap, nrow * (side + title) + 0.45
    fig = plt.figure(figsize=(width, height))
    for k in range(n):
        r, c = divmod(k, ncol)
        ax = fig.add_axes(((gap + c * (side + gap)) / width, 1 - (0.45 + (r + 1) * (side + title) - title) / height,
                           side / width, side / height))
        _show(ax, portraits["image"].values[k])
        ax.set_title(_identity_label(portraits, k), fontsize=7, pad=3)
    fig.suptitle(f"Portraits at {res} px (one image pixel per figure pixel)", fontsize=10, y=1 - 0.12 / height)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
