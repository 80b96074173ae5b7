"""Figure of the pose-invariance analysis: identity information and cross-pose read-outs, layer by layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402


def pose_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """MI with identity within/across/given pose; same- vs other-pose read-out accuracy; accuracy matrices."""
    layers = [str(v) for v in ds["layer"].values]
    pos = np.arange(len(layers))
    picks = sorted({0, len(layers) // 3, 2 * len(layers) // 3, len(layers) - 1})
    fig = plt.figure(figsize=(17, 5.5), constrained_layout=True)
    grid = fig.add_gridspec(2, 2 + len(picks) // 2 + len(picks) % 2, width_ratios=[3, 3] + [1.2] * (
        len(picks) // 2 + len(picks) % 2))
    ax = fig.add_subplot(grid[:, 0])
    for b, label in enumerate(ds["pose_bin"].values):
        ax.plot(pos, ds["mi_within"].isel(pose_bin=b), color="0.6", lw=1, marker=".",
                label=f"within {ds.attrs['pose']} {label}" if b == 0 else f"within {label}")
    ax.plot(pos, ds["mi_across"], "o-", color="tab:blue", lw=2, label="across poses")
    ax.plot(pos, ds["mi_given_pose"], "s--", color="tab:orange", lw=2, label=f"given {ds.attrs['pose']}")
    ax.set_xticks(pos, layers, rotation=60, ha="right")
    ax.set(ylabel="MI with identity, mean over units (bits)", xlabel="layer", title="identity information and pose")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[:, 1])
    ax.plot(pos, ds["accuracy_same_pose"], "o-", color="tab:green", label="same pose (held-out half)")
    ax.plot(pos, ds["accuracy_other_pose"], "s-", color="tab:red", label="other poses")
    ax.axhline(ds.attrs["chance"], color="k", ls=":", lw=1, label="chance")
    ax.set(ylabel="identity read-out accuracy", ylim=(0, 1.02), xlabel="layer",
           title=f"cross-pose linear read-out ({ds.attrs['n_bins']} {ds.attrs['pose']} bins)")
    ax.set_xticks(pos, layers, rotation=60, ha="right")
    twin = ax.twinx()
    twin.plot(pos, ds["invariance"], "d:", color="tab:purple", label="invariance (other / same)")
    twin.set(ylabel="invariance index (other / same pose)", ylim=(0, 1.1))
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    cols = len(picks) // 2 + len(picks) % 2
    for k, li in enumerate(picks):
        ax = fig.add_subplot(grid[k // cols, 2 + k % cols])  # row-major: input layers first
        im = ax.imshow(ds["accuracy"].isel(layer=li).values, vmin=0, vmax=1, cmap="viridis")
        n = ds.sizes["train_bin"]
        ax.set_xticks(range(n), [str(v) for v in ds["test_bin"].values], rotation=45, fontsize=6)
        ax.set_yticks(range(n), [str(v) for v in ds["train_bin"].values], fontsize=6)
        ax.set(title=layers[li], xlabel=f"test {ds.attrs['pose']}", ylabel=f"train {ds.attrs['pose']}")
        fig.colorbar(im, ax=ax, shrink=0.7, label="accuracy")
    fig.suptitle(title or "pose invariance of the identity code")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
