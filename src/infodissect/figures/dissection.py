"""Figures of network dissection: detectors per concept and layer, interpretability across layers, under
rotation and against the location-only baseline, and each layer's best unit on its top images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402


def dissection_figure(root: xr.Dataset, rotation: xr.Dataset | None, out: str | Path, title: str = "") -> None:
    """Four panels (first quantile): detectors per concept and layer; detectors and concepts across layers
    (trained vs untrained); detectors under rotation; per concept the best unit's IoU against the
    location-only unit and the IoU ceiling."""
    q0 = root.isel(quantile=0)
    q = float(root["quantile"].values[0])
    thr = float(root.attrs.get("iou_threshold", 0.04))
    layers = [str(v) for v in root["layer"].values]
    concepts = [str(c) for c in root["concept"].values]
    fig = plt.figure(figsize=(23, 11), constrained_layout=True)
    grid = fig.add_gridspec(2, 3)
    axes = {"concepts": fig.add_subplot(grid[0, 0]), "layers": fig.add_subplot(grid[0, 1]),
            "training": fig.add_subplot(grid[0, 2]), "rotation": fig.add_subplot(grid[1, 0]),
            "ceiling": fig.add_subplot(grid[1, 1:])}
    networks = [str(v) for v in root["network"].values]

    ax = axes["concepts"]
    counts = q0["detectors_by_concept"].sel(network="trained").transpose("layer", "concept").values
    im = ax.imshow(counts, cmap="Blues", aspect="auto", vmin=0, vmax=max(1, counts.max()))
    for (i, j), v in np.ndenumerate(counts):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > counts.max() / 2 else "black")
    ax.set_xticks(range(len(concepts)), concepts, rotation=70, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    ax.set(title=f"detectors per concept (IoU > {thr:g}, q = {q:g})", xlabel="concept", ylabel="layer")
    fig.colorbar(im, ax=ax, label="detector units")

    ax = axes["layers"]
    pos = np.arange(len(layers))
    units = root["units"].values
    styles = {"trained": ("o-", "tab:blue"), "untrained": ("s--", "tab:gray")}
    for net in [n for n in networks if n in styles]:
        style, color = styles.get(net, ("^-", None))
        share = 100 * q0["detectors"].sel(network=net).values / np.maximum(units, 1)
        ax.plot(pos, share, style, color=color, label=f"{net}: detectors (% of units)")
    ax.set_xticks(pos, layers, rotation=60, ha="right")
    ax.set(ylabel="detector units (% of the layer)", xlabel="layer", title="interpretability across layers")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    for net in [n for n in networks if n in styles]:
        _, color = styles.get(net, ("", None))
        twin.plot(pos, q0["unique_concepts"].sel(network=net).values, ":", marker="x", color=color,
                  label=f"{net}: concepts")
    twin.set_ylabel("concepts with a detector")
    twin.set_ylim(0, max(1, len(concepts)))
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")

    ax = axes["training"]
    snaps = sorted((int(n.split()[1]), n) for n in networks if n.startswith("epoch "))
    if snaps:
        final = int(root.attrs.get("epochs", 0))
        points = snaps + ([(final, "trained")] if final not in [e for e, _ in snaps] else [])
        epochs = [e for e, _ in points]
        det = np.stack([q0["detectors"].sel(network=n).values for _, n in points])  # (epoch, layer)
        nets = [j for j, layer in enumerate(layers) if layer != "pixels"]  # the pixels do not train
        for j in nets:
            ax.plot(epochs, 100 * det[:, j] / max(units[j], 1), marker=".", lw=1, label=layers[j])
        ax.plot(epochs, 100 * det[:, nets].sum(1) / max(units[nets].sum(), 1), "k-", lw=3, label="all layers")
        ax.set(xlabel="epoch (0 = before training)", ylabel="detector units (% of the layer)",
               title="interpretability across training")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "no snapshots (training.snapshots)", ha="center", va="center")

    ax = axes["rotation"]
    if rotation is not None and rotation.sizes.get("alpha", 0):
        r0 = rotation.isel(quantile=0)
        alpha = rotation["alpha"].values
        ax.plot(alpha, r0["detectors"].values, "o-", color="tab:blue", label="detector units")
        ax.plot(alpha, r0["unique_concepts"].values, "s--", color="tab:orange", label="concepts with a detector")
        ax.set(xlabel="rotation fraction alpha (0 = the layer's own units, 1 = a random rotation)",
               ylabel="count", title=f"{rotation.attrs.get('layer')} under rotation Q^alpha")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "rotation baseline not run (dissection.rotation_alphas)", ha="center", va="center")

    ax = axes["ceiling"]
    best = q0["best_iou"].sel(network="trained").max("layer").values  # any unit, labelled by it or not
    x = np.arange(len(concepts))
    ax.bar(x - 0.2, best, 0.4, color="tab:blue", label="best unit (any layer)")
    ax.bar(x + 0.2, np.nan_to_num(q0["location_iou"].values), 0.4, color="tab:green",
           label="location-only unit (mean mask)")
    ax.plot(x, q0["ceiling"].values, "k_", markersize=14, mew=2, label="ceiling min(q, p) / max(q, p)")
    ax.axhline(thr, color="tab:red", ls=":", label=f"detector threshold {thr:g}")
    ax.set_xticks(x, concepts, rotation=70, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1.2)
    ax.set(ylabel="IoU (log scale)", title="per concept: best unit, location-only baseline, ceiling")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Network dissection{': ' + title if title else ''} "
                 f"({root.attrs.get('set', '')}, {root.attrs.get('n_samples', '')} images)")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def units_figure(examples: list[Any], out: str | Path, title: str = "") -> None:
    """Per layer, its best unit (largest label IoU) on its top images, the thresholded mask outlined."""
    cols = max((len(e.samples) for e in examples), default=1)
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.9 * cols + 1.5, 2.0 * len(examples)), squeeze=False,
                             constrained_layout=True)
    for row, e in zip(axes, examples):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(e.samples):
                ax.axis("off")
                continue
            img = e.images[j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
            ax.contour(e.masks[j].astype(float), levels=[0.5], colors="red", linewidths=1.0)
            ax.set_xlabel(f"sample {int(e.samples[j])}", fontsize=7)
        row[0].set_ylabel(f"{e.layer}\nunit {e.unit}\n{e.label}\nIoU {e.iou:.3f}", fontsize=8, rotation=0,
                          ha="right", va="center")
    fig.suptitle(f"Each layer's best unit on its top images (red: mask above the unit's threshold)"
                 f"{': ' + title if title else ''}", fontsize=10)
    fig.savefig(out, dpi=110)
    plt.close(fig)
