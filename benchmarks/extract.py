"""Print the throughput of activation extraction against the bare forward pass.

    python benchmarks/extract.py [--model results/models/identity_s0/model.pt]
                                 [--stimuli results/stimuli/analysis.zarr] [--threads 2]

Both read the same images from the stimulus store in the same batches; extraction
also stores every read-out layer (float16 by default) into a fresh Zarr store.
Target: extraction at >= 80% of the forward pass's images/s.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from infodissect.activations import extract, load_trained
from infodissect.nets import network_input


def forward_only(model_path: str, stimuli: str, batch_size: int, device: str) -> float:
    """Images/s of reading the images and running the model, storing nothing."""
    model, _ = load_trained(model_path, device)
    image = zarr.open_group(stimuli, mode="r")["image"]
    n = image.shape[0]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, n, batch_size):
            model(network_input(torch.from_numpy(np.ascontiguousarray(image[lo:lo + batch_size])).to(device)))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="results/models/identity_s0/model.pt")
    ap.add_argument("--stimuli", default="results/stimuli/analysis.zarr")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the stores are written (default: a temporary directory)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = zarr.open_group(a.stimuli, mode="r")["image"].shape[0]
    forward_only(a.model, a.stimuli, a.batch, device)  # warm-up
    ex = importlib.import_module("infodissect.activations.extract")
    fwd, total, loop = [], [], []
    for _ in range(a.repeats):
        fwd.append(forward_only(a.model, a.stimuli, a.batch, device))
        tmp = Path(tempfile.mkdtemp(dir=a.dir)) / "act.zarr"
        try:
            marks = {}
            real_tqdm = ex.tqdm

            def timed_batches(it, **kw):  # the batch loop starts after the store's skeleton is written
                marks["loop"] = time.perf_counter()
                return real_tqdm(it, **kw)

            ex.tqdm = timed_batches
            t0 = time.perf_counter()
            extract(a.model, a.stimuli, tmp, dtype=a.dtype, batch_size=a.batch, device=device, progress=False)
            t1 = time.perf_counter()
            ex.tqdm = real_tqdm
            total.append(n / (t1 - t0))
            loop.append(n / (t1 - marks["loop"]))
            size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**20
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
    f, t, lp = (float(np.median(v)) for v in (fwd, total, loop))
    where = f"cpu ({a.threads} threads)" if device == "cpu" else torch.cuda.get_device_name()
    print(f"{n} images, {where}, stores in {a.dir or tempfile.gettempdir()}, median of {a.repeats}: "
          f"forward pass {f:8.1f} images/s; extraction of every layer ({a.dtype}, {size:.0f} MB): "
          f"{lp:8.1f} images/s = {100 * lp / f:.0f}% of the forward pass once the store's skeleton is written "
          f"(runs: {', '.join(f'{100 * x / f:.0f}%' for x in loop)}); {t:8.1f} images/s = {100 * t / f:.0f}% "
          f"including the skeleton ({n / t - n / lp:.2f} s)")


if __name__ == "__main__":
    main()
