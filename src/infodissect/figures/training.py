"""Training figure: loss and accuracy per epoch, and test-set accuracy by factor level or bin."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def training_figure(metrics: str | Path, factors: str | Path, out: str | Path, title: str = "") -> None:
    """Write the PNG: curves (left two panels) and one bar group per factor (right)."""
    m = pd.read_csv(metrics)
    f = pd.read_csv(factors)
    names = list(dict.fromkeys(f["factor"]))
    fig = plt.figure(figsize=(14, 4 + 0.5 * len(names) // 3), constrained_layout=True)
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 1, 2])
    ax = fig.add_subplot(grid[0])
    ax.plot(m["epoch"], m["train_loss"], "o-", label="train")
    ax.plot(m["epoch"], m["test_loss"], "s-", label="test set")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss (nats)", title="loss")
    ax.legend()
    ax = fig.add_subplot(grid[1])
    ax.plot(m["epoch"], 100 * m["train_accuracy"], "o-", label="train")
    ax.plot(m["epoch"], 100 * m["test_accuracy"], "s-", label="test set")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 101), title="accuracy")
    ax.legend()
    ax = fig.add_subplot(grid[2])
    x, ticks, labels = 0, [], []
    for name in names:
        sub = f[f["factor"] == name]
        ax.bar(range(x, x + len(sub)), 100 * sub["accuracy"], width=0.8)
        ticks.append(x + (len(sub) - 1) / 2)
        labels.append(name)
        x += len(sub) + 1
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="test-set accuracy (%)", ylim=(0, 101),
           title="test-set accuracy by factor (bars: levels, or quantile bins low to high)")
    fig.suptitle(title or "training")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
