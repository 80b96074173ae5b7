"""Figures of the relevance stage: maps, masking curves, face-part shares, and consistency across models."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

_ORDER_STYLE = {"morf": ("tab:red", "MoRF (most relevant first)"), "random": ("0.4", "random"),
                "lerf": ("tab:blue", "LeRF (least relevant first)")}
_DASHES = ["-", "--", ":", "-."]


def _save(fig: plt.Figure, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _signed(ax: plt.Axes, m: np.ndarray) -> matplotlib.image.AxesImage:
    v = float(np.nanmax(np.abs(m))) or 1e-12
    im = ax.imshow(m, cmap="bwr", vmin=-v, vmax=v, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def maps_figure(ds: xr.Dataset, images: np.ndarray, out: str | Path, title: str = "",
                examples: np.ndarray | None = None) -> None:
    """Columns: the mean map of every method over all images (each image's map scaled to unit L1 norm), then
    example images (``images``, the samples ``examples`` of ``ds``; default its first) with each method's map
    (red: evidence for the true class, blue: against)."""
    methods = [str(m) for m in ds["attribution"].values]
    k = min(len(images), ds.sizes["sample"])
    chosen = ds.sel(sample=examples) if examples is not None else ds.isel(sample=slice(0, k))
    fig, axes = plt.subplots(len(methods) + 1, k + 1, figsize=(1.9 * (k + 1) + 0.6, 1.9 * (len(methods) + 1) + 0.6),
                             squeeze=False, constrained_layout=True)
    rel = ds["relevance"]
    task = ds.attrs.get("task", "")
    axes[0, 0].set_axis_off()
    axes[0, 0].text(0.5, 0.5, f"mean map over\n{ds.sizes['sample']} images\n(each scaled to\nunit L1 norm)",
                    ha="center", va="center", fontsize=8, transform=axes[0, 0].transAxes)
    for j in range(k):
        ax = axes[0, j + 1]
        ax.imshow(images[j].squeeze() if images.shape[-1] == 1 else images[j], cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        cls = str(ds["class"].values[int(chosen["target"].values[j])])
        ok = int(chosen["predicted"].values[j]) == int(chosen["target"].values[j])
        ax.set_title(f"{task} {cls}\n({'right' if ok else 'wrong'})", fontsize=7)
    for i, m in enumerate(methods):
        r = rel.sel(attribution=m).values
        norm = np.abs(r).reshape(len(r), -1).sum(1)
        mean = (r / np.maximum(norm, 1e-30)[:, None, None]).mean(0)
        im = _signed(axes[i + 1, 0], mean)
        axes[i + 1, 0].set_ylabel(m.replace("_", " "), fontsize=8)
        fig.colorbar(im, ax=axes[i + 1, 0], fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
        ex = chosen["relevance"].sel(attribution=m).values
        for j in range(k):
            im = _signed(axes[i + 1, j + 1], ex[j])
            if j == k - 1:
                cb = fig.colorbar(im, ax=axes[i + 1, j + 1], fraction=0.046, pad=0.02)
                cb.ax.tick_params(labelsize=5)
                cb.set_label("relevance (logit units)", fontsize=6)
    fig.suptitle(title or "relevance of the true-class logit", fontsize=10)
    _save(fig, out)


def masking_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """The true-class logit and the accuracy as patches are removed in each order, per method, and the AOPC
    per order with the tests across images."""
    fig, (ax_l, ax_a, ax_b) = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
    removed = 100 * ds["removed"].values
    methods = [str(m) for m in ds["masked_by"].values]
    for i, m in enumerate(methods):
        for order in [str(o) for o in ds["order"].values]:
            colour, label = _ORDER_STYLE[order]
            sel = dict(masked_by=m, order=order)
            kw = dict(color=colour, linestyle=_DASHES[i % 4], marker="o", markersize=2.5,
                      label=f"{label}, {m.replace('_', ' ')}")
            ax_l.plot(removed, ds["masked_logit"].sel(sel).mean("sample").values, **kw)
            ax_a.plot(removed, 100 * ds["masked_correct"].sel(sel).mean("sample").values, **kw)
    patch = ds.attrs.get("patch", "?")
    ax_l.set(xlabel=f"image removed (%, {patch} x {patch} px patches, filled with {ds.attrs.get('fill', '?')})",
             ylabel="true-class logit (mean over images)", title="evidence left for the true class")
    ax_a.set(xlabel="image removed (%)", ylabel="accuracy (%)", ylim=(0, 102), title="accuracy")
    ax_a.legend(fontsize=7, loc="upper right")
    width = 0.8 / len(methods)
    orders = [str(o) for o in ds["order"].values]
    for i, m in enumerate(methods):
        a = ds["aopc"].sel(masked_by=m)
        mean = a.mean("sample").values
        sem = a.std("sample").values / np.sqrt(a.sizes["sample"])
        x = np.arange(len(orders)) + (i - (len(methods) - 1) / 2) * width
        ax_b.bar(x, mean, width * 0.9, yerr=1.96 * sem, capsize=3, label=m.replace("_", " "),
                 color=[_ORDER_STYLE[o][0] for o in orders], alpha=1.0 - 0.35 * i, edgecolor="black")
        p = ds["ordering_pvalue"].sel(masked_by=m).values
        top = float(np.nanmax(mean + 1.96 * sem))
        ax_b.text(x[1], top * 1.05 + 0.02 * i * top, f"{m.replace('_', ' ')}: p(MoRF>rand) = {p[0]:.2g}, "
                  f"p(rand>LeRF) = {p[1]:.2g}", ha="center", fontsize=7)
    ax_b.set_xticks(range(len(orders)), [_ORDER_STYLE[o][1] for o in orders], fontsize=8)
    ax_b.set(ylabel="AOPC (logit units; bars: 95% interval)", title="area over the perturbation curve")
    ax_b.axhline(0, color="black", linewidth=0.8)
    for ax in (ax_l, ax_a, ax_b):
        ax.grid(alpha=0.3)
    fig.suptitle(title or "masking in order of relevance", fontsize=11)
    _save(fig, out)


def parts_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """Each face part's share of positive relevance per method, by expression and by yaw (first method), and the
    true-class logit as whole parts are removed in order of relevance."""
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8), constrained_layout=True,
                             gridspec_kw={"width_ratios": [1.4, 1.1, 1.1, 1.0]})
    parts = [str(p) for p in ds["part"].values]
    methods = [str(m) for m in ds["attribution"].values]
    share = ds["part_share"]
    bars = [(m.replace("_", " "), share.sel(attribution=m).mean("sample").values, None) for m in methods]
    if "feature_part_share" in ds:  # the paper's reverse-correlation features of the same model, hatched
        bars += [(f"revcorr {f} features (vertex MI)", ds["feature_part_share"].sel(feature=f).values, "//")
                 for f in ("shape", "texture")]
    width = 0.8 / len(bars)
    for i, (label, values, hatch) in enumerate(bars):
        axes[0].bar(np.arange(len(parts)) + (i - (len(bars) - 1) / 2) * width, 100 * values, width * 0.9,
                    label=label, hatch=hatch, edgecolor="black" if hatch else None, linewidth=0.3)
    axes[0].set_xticks(range(len(parts)), parts, rotation=60, ha="right", fontsize=8)
    axes[0].set(ylabel="share (%)", title="where the evidence is: share of positive relevance per method"
                + ("\n(hatched: share of the reverse-correlation features)" if len(bars) > len(methods) else ""))
    axes[0].legend(fontsize=7)
    first = share.isel(attribution=0)
    for ax, factor in ((axes[1], "expression"), (axes[2], "yaw")):
        if factor not in ds.coords:
            ax.text(0.5, 0.5, f"{factor} does not vary", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        values = ds[factor].values
        if values.dtype.kind in "OUST":
            levels = list(dict.fromkeys(str(v) for v in values))
            groups = [np.asarray([str(v) == lv for v in values]) for lv in levels]
        else:
            edges = np.quantile(values.astype(float), [0, 1 / 3, 2 / 3, 1])
            levels = [f"{edges[k]:.0f} to {edges[k + 1]:.0f} deg" for k in range(3)]
            bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, 2)
            groups = [bins == k for k in range(3)]
        with warnings.catch_warnings():  # a part absent from every image of a group: NaN, drawn blank
            warnings.simplefilter("ignore", RuntimeWarning)
            table = np.stack([np.nanmean(first.values[g], 0) if g.any() else np.full(len(parts), np.nan)
                              for g in groups])
        im = ax.imshow(100 * table, aspect="auto", cmap="viridis", vmin=0)
        ax.set_xticks(range(len(parts)), parts, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(levels)), levels, fontsize=7)
        ax.set_title(f"share (%) by {factor} ({methods[0].replace('_', ' ')})", fontsize=9)
        fig.colorbar(im, ax=ax, label="share of positive relevance (%)", shrink=0.8)
    axes[3].plot(ds["part_step"].values, ds["part_logit"].mean("sample").values, marker="o", color="tab:red")
    axes[3].set(xlabel="face parts removed (most relevant first)", ylabel="true-class logit (mean over images)",
                title="removing whole parts")
    axes[3].grid(alpha=0.3)
    fig.suptitle(title or "relevance per face part", fontsize=11)
    _save(fig, out)


def compare_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """Two model x model matrices: the mean correlation of the relevance maps, and the AOPC of the column model
    when pixels are removed in the row model's MoRF order."""
    names = [f"{m}\n({t})" for m, t in zip(ds["model"].values, ds["task"].values)]
    fig, axes = plt.subplots(1, 2, figsize=(5.2 * 2 + 1, 1.1 * len(names) + 2.8), constrained_layout=True)
    for ax, var, label, cmap in ((axes[0], "map_correlation", "mean correlation of the maps", "RdBu_r"),
                                 (axes[1], "cross_aopc_relative", "AOPC / the column model's own-order AOPC",
                                  "PuOr_r")):
        v = ds[var].values
        kw = dict(vmin=-1, vmax=1) if var == "map_correlation" else dict(vmin=0, vmax=max(2.0, float(np.nanmax(v))))
        im = ax.imshow(v, cmap=cmap, **kw)
        raw = ds["cross_aopc"].values
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                text = f"{v[i, j]:.2f}" if var == "map_correlation" else f"{v[i, j]:.2f}\n({raw[i, j]:.2f})"
                dark = abs(v[i, j]) > 0.6 if var == "map_correlation" else abs(v[i, j] - 1) > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    axes[0].set(title=f"relevance maps ({ds.attrs.get('method', '')}) agree?", xlabel="model", ylabel="model")
    axes[1].set(title="masked in the row model's MoRF order: the column model's\nAOPC / its own-order AOPC "
                      "(raw AOPC, logit units)", xlabel="model measured",
                ylabel="model whose relevance orders the removal")
    axes[1].title.set_fontsize(10)
    fig.suptitle(title or "relevance across models", fontsize=11)
    _save(fig, out)
