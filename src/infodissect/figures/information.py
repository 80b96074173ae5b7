"""Figures of the MI stage: the layer profile, unit x factor matrices and spatial MI maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402


_PANELS = (("max_mi", "largest MI, any unit and position", "MI (bits)"),
           ("mean_mi_pooled", "mean over units (spatially pooled)", "MI (bits)"),
           ("share_significant", "units above the permutation threshold", "share of units"))


def factor_labels(ds: xr.Dataset) -> dict[str, str]:
    """Each factor's label: its name, or ``"name | parent"`` for a factor measured given another (the MI
    store's ``given`` coordinate)."""
    names = [str(f) for f in ds["factor"].values]
    given = [str(g) for g in ds["given"].values] if "given" in ds.coords else [""] * len(names)
    return {f: f"{f} | {g}" if g else f for f, g in zip(names, given)}


def _factor_styles(profile: xr.Dataset) -> dict[str, dict]:
    """One colour per factor; intrinsic factors solid, extrinsic ones dashed."""
    cmap = plt.get_cmap("tab20")
    out = {}
    for i, (f, intrinsic) in enumerate(zip(profile["factor"].values, profile["intrinsic"].values)):
        out[str(f)] = {"color": cmap(i % 20), "linestyle": "-" if intrinsic else "--",
                       "linewidth": 2.2 if str(f) == "identity" else 1.3}
    return out


def layer_profile_figure(profile: xr.Dataset, out: str | Path, title: str = "") -> None:
    """Per factor, three statistics of the information each layer carries, from pixels to logits."""
    styles, labels = _factor_styles(profile), factor_labels(profile)
    layers = [str(v) for v in profile["layer"].values]
    pos = np.arange(len(layers))
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5), constrained_layout=True)
    for ax, (stat, label, unit) in zip(axes, _PANELS):
        for f in styles:
            ax.plot(pos, profile[stat].sel(factor=f).values, marker="o", markersize=3, label=labels[f], **styles[f])
        ax.set_xticks(pos, layers, rotation=60, ha="right")
        ax.set(xlabel="layer (input to output)", ylabel=unit, title=label)
        if stat != "share_significant":
            ax.set_yscale("symlog", linthresh=0.01)
            ax.set_ylim(bottom=0)  # bias-corrected MI dips just below 0 for uninformative variables
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="factor (dashed: extrinsic;\na | b: a given b)")
    fig.suptitle(title or "information about each generative factor, layer by layer")
    _save(fig, out)


def unit_matrix_figure(layers: dict[str, xr.Dataset], orders: dict[str, np.ndarray], out: str | Path,
                       title: str = "") -> None:
    """Per layer, the factor x unit matrix of pooled MI with units in ``orders[layer]`` (e.g. grouped by their
    best factor), and the shares of significant units."""
    names = list(layers)
    cols = 4
    rows = int(np.ceil((len(names) + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), constrained_layout=True, squeeze=False)
    factors = [str(f) for f in layers[names[0]]["factor"].values]
    labels = list(factor_labels(layers[names[0]]).values())
    for ax, name in zip(axes.flat, names):
        mi = layers[name]["mi_pooled"].transpose("factor", ...)
        order = orders[name]
        values = mi.values.reshape(len(factors), -1)[:, order]
        im = ax.imshow(values, aspect="auto", cmap="magma", interpolation="nearest", vmin=0)
        ax.set_yticks(range(len(factors)), labels, fontsize=6)
        var = " x ".join(d for d in mi.dims if d != "factor")
        ax.set(xlabel=f"{var} (sorted by best factor; {values.shape[1]})", title=name)
        fig.colorbar(im, ax=ax, label="MI (bits)", shrink=0.8)
    ax = axes.flat[len(names)]
    share = np.stack([layers[n]["significant_pooled"].mean([d for d in layers[n]["significant_pooled"].dims
                                                          if d != "factor"]).values for n in names], 1)
    im = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(factors)), labels, fontsize=6)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set(title="share of units significant (FWER)", xlabel="layer")
    fig.colorbar(im, ax=ax, label="share of units", shrink=0.8)
    for extra in list(axes.flat)[len(names) + 1:]:
        extra.set_axis_off()
    fig.suptitle(title or "unit x factor information (spatially pooled)")
    _save(fig, out)


def spatial_maps_figure(layers: dict[str, xr.Dataset], out: str | Path, title: str = "") -> None:
    """Per factor (rows) and spatial layer (columns): the largest MI over units at each position."""
    spatial = {n: ds for n, ds in layers.items() if "y" in ds["mi"].dims}
    if not spatial:
        raise ValueError("no layer with spatial MI maps")
    factors = [str(f) for f in next(iter(spatial.values()))["factor"].values]
    labels = factor_labels(next(iter(spatial.values())))
    # Plain subplots (no constrained layout): with a colour bar per panel it would cost seconds per figure.
    fig, axes = plt.subplots(len(factors), len(spatial), figsize=(1.7 * len(spatial) + 1.5, 1.5 * len(factors) + 1),
                             squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.97, top=1 - 0.9 / (1.5 * len(factors) + 1), bottom=0.02, wspace=0.45,
                        hspace=0.25)
    for j, (name, ds) in enumerate(spatial.items()):
        mi = ds["mi"]
        units = [d for d in mi.dims if d not in ("factor", "y", "x")]
        best = mi.max(units).transpose("factor", "y", "x")
        for i, f in enumerate(factors):
            ax = axes[i, j]
            m = best.sel(factor=f).values
            im = ax.imshow(m, cmap="magma", vmin=0, vmax=max(float(np.nanmax(m)), 1e-3), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{name}\n{m.shape[0]}x{m.shape[1]}", fontsize=8)
            if j == 0:
                ax.set_ylabel(labels[f].replace(" | ", "\n| "), fontsize=8)
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            cb.ax.tick_params(labelsize=5)
            if j == len(spatial) - 1:
                cb.set_label("bits", fontsize=6)
    fig.suptitle(title or "where each factor is represented: max over units of MI (bits) per position")
    _save(fig, out)


def _save(fig: plt.Figure, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
