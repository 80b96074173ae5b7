"""Print training throughput (images/s): Zarr loader vs in-memory tensors, and on-the-fly rendering.

    python benchmarks/train.py [--configfile config/config.yaml] [--steps 40] [--threads 2] [--design PATH]

Uses the config's training set (rendered first with the pipeline's own rules, if it is
not in results/ yet: `snakemake results/stimuli/train.zarr`) and its training spec
(task, width, stem, batch size). Each figure is the mean over its steps, after warm-up:

  in-memory      training steps on batches cut from the whole set held as one tensor;
  zarr loader    the same steps fed by the training stage's loader (StoreBatches: whole
                 chunks read from the store, shuffled across chunks);
  loader alone   the loader without training (its headroom);
  on the fly     the steps fed by RenderedBatches (each batch rendered from the design
                 table on the training device), and rendering alone.

The loader passes when it reaches at least 90% of the in-memory figure. On a CUDA
machine the steps run there in bf16, as the training stage runs them.

``--design PATH`` also feeds on-the-fly batches from another design table with the same
render settings, e.g. the paper's 26M-row one (``python benchmarks/design.py --keep PATH``),
and prints its figures beside the config's design's (issue 18: the same images/s; the
network's last layer is sized to that design's identities).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import zarr

from infodissect.config import load_config
from infodissect.nets import build_model, network_input
from infodissect.train.data import RenderedBatches, StoreBatches, task_labels
from infodissect.train.loop import autocast, train_step

ROOT = Path(__file__).resolve().parents[1]


def ensure_stores(configfile: str, train_set: str) -> tuple[Path, Path]:
    """The training set's rendered store and design table, made by the workflow if missing."""
    store = ROOT / f"results/stimuli/{train_set}.zarr"
    design = ROOT / f"results/stimuli/designs/{train_set}.zarr"
    if not store.exists():
        subprocess.run([sys.executable, "-m", "snakemake", str(store.relative_to(ROOT)), str(design.relative_to(ROOT)),
                        "--cores", "all", "--configfile", configfile, "--quiet", "rules"], cwd=ROOT, check=True)
    return store, design


def in_memory(store: Path, labels: np.ndarray, batch: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of the whole set, held in memory as the network's input tensor (the upper bound)."""
    images = network_input(np.asarray(zarr.open_group(str(store), mode="r")["image"][:]))
    targets = torch.from_numpy(labels)
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(images), generator=g)
        for s in range(0, len(order) - batch + 1, batch):
            idx = order[s:s + batch]
            yield images[idx], targets[idx]


def forever(batches: StoreBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def rate(source: Iterator, batch: int, steps: int, step=None, device: torch.device = torch.device("cpu")) -> float:
    """Images/s over ``steps`` iterations (after 3 warm-up ones) of ``source``, training with ``step`` if given.

    The mean, not the median: a loader pays its reads on a few of the steps.
    """
    for i in range(steps + 3):
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = next(source)
        if step is not None:
            step(x.to(device), y.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config/config.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--design", help="a second design table to train from on the fly (same render settings)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    config = load_config(ROOT / a.configfile)
    t = config["training"]
    model_name = t["models"][0]
    task = model_name.rpartition("_s")[0]
    store, design = ensure_stores(a.configfile, t["train_set"])
    labels = task_labels(store, task)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    channels = zarr.open_group(str(store), mode="r")["image"].shape[-1]
    model = build_model(len(labels.classes), width=t["width"], stem=t["stem"], in_channels=channels).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = autocast(device)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(model, opt, x, y, amp)

    b = t["batch_size"]
    where = f"cpu ({a.threads} threads)" if device.type == "cpu" else torch.cuda.get_device_name(device)
    n = zarr.open_group(str(store), mode="r")["image"].shape[0]
    print(f"{model_name}: width {t['width']}, stem {t['stem']}, batch {b}, {n} training images "
          f"({store.relative_to(ROOT)}), {where}", flush=True)
    model.train()
    memory = rate(in_memory(store, labels.index, b), b, a.steps, step, device)
    loader = rate(forever(StoreBatches(store, labels, b, window=t["window"])), b, a.steps, step, device)
    alone = rate(forever(StoreBatches(store, labels, b, window=t["window"])), b, a.steps)
    print(f"train, in-memory tensors:    {memory:8.1f} images/s", flush=True)
    print(f"train, zarr loader:          {loader:8.1f} images/s ({loader / memory:.0%} of in-memory; "
          f"target >= 90%)", flush=True)
    print(f"zarr loader alone:           {alone:8.1f} images/s", flush=True)
    spec = {"generator": config["stimuli"]["generator"], "render": config["stimuli"]["render"]}
    rendered = RenderedBatches(design, labels, b, spec, window=t["window"], device=device)
    fly = rate(forever(rendered), b, max(10, a.steps // 4), step, device)
    render_alone = rate(forever(rendered), b, max(10, a.steps // 4))
    print(f"train, rendered on the fly:  {fly:8.1f} images/s ({fly / memory:.0%} of in-memory)", flush=True)
    print(f"rendering alone:             {render_alone:8.1f} images/s "
          f"({config['stimuli']['render']['resolution']} px, antialias {config['stimuli']['render']['antialias']})",
          flush=True)
    figures = {"in_memory": memory, "zarr_loader": loader, "loader_alone": alone, "on_the_fly": fly,
               "render_alone": render_alone}
    if a.design:
        figures.update(other_design(Path(a.design), spec, task, t, b, a.steps, device, amp, fly, render_alone))
    print(json.dumps(figures))


def other_design(path: Path, spec: dict, task: str, t: dict, b: int, steps: int, device: torch.device, amp,
                 fly: float, render_alone: float) -> dict[str, float]:
    """On-the-fly training and rendering rates from the design table ``path``, printed beside ``fly`` and
    ``render_alone`` (the config's design's)."""
    t0 = time.perf_counter()
    labels = task_labels(path, task)
    n = zarr.open_group(str(path), mode="r")["identity"].shape[0]
    print(f"{path}: {n:,} rows, {len(labels.classes):,} classes (labels read in {time.perf_counter() - t0:.1f} s)",
          flush=True)
    model = build_model(len(labels.classes), width=t["width"], stem=t["stem"],
                        in_channels=3 if spec["render"]["color"] == "rgb" else 1).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    rendered = RenderedBatches(path, labels, b, spec, window=t["window"], device=device)
    other_fly = rate(forever(rendered), b, max(10, steps // 4), lambda x, y: train_step(model, opt, x, y, amp), device)
    other_alone = rate(forever(rendered), b, max(10, steps // 4))
    print(f"train, on the fly, {path.name}: {other_fly:8.1f} images/s ({other_fly / fly:.0%} of the config's design)",
          flush=True)
    print(f"rendering alone, {path.name}:   {other_alone:8.1f} images/s ({other_alone / render_alone:.0%} of the "
          f"config's design)", flush=True)
    return {"other_on_the_fly": other_fly, "other_render_alone": other_alone}


if __name__ == "__main__":
    main()
