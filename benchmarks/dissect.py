"""What dissection costs against the forward pass that produced the activations it reads.

    python benchmarks/dissect.py [--results results] [--model identity_s0] [--set analysis]
                                 [--threads 2] [--workers 1] [--repeats 3]

Needs the demo's outputs (``bash scripts/pipeline.sh``): the model, the stimulus store
and the activation store of ``--set``. Prints, in one run (medians of ``--repeats``):

- anchor: the forward pass of the model over every image of the set (images in memory,
  ``--forward-batch`` 128 as the activation stage), every read-out layer captured and cast
  to float16 (what the activation stage does before writing);
- dissection of every map layer of the stored activations, ``--batch`` images at a time
  (256, as ``dissection.batch_size``): both passes (exact thresholds, then IoU), reading
  the store, with ``--workers`` batches at once;
- the same for the pixels (the input baseline);
- the ratio dissection / forward (the bar: at most 2x), and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import numpy as np
import torch

from infodissect.activations.extract import load_trained
from infodissect.analyses import dissection as D
from infodissect.nets import READOUT_LAYERS, network_input, readout_modules
from infodissect.store import open_group, open_tree
from timing import median_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results")
    ap.add_argument("--model", default="identity_s0")
    ap.add_argument("--set", default="analysis")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256, help="dissection batch (config dissection.batch_size)")
    ap.add_argument("--forward-batch", type=int, default=128, help="forward batch (config activations.batch_size)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r = Path(a.results)
    model_path = r / "models" / a.model / "model.pt"
    stim_path = r / "stimuli" / f"{a.set}.zarr"
    act_path = r / "activations" / a.model / f"{a.set}.zarr"
    model, _ = load_trained(model_path)
    stim = open_group(stim_path, "stimulus store")
    images, parts = stim["image"], stim["parts"]
    n = images.shape[0]
    mods = readout_modules(model)
    sink: dict[str, torch.Tensor] = {}
    hooks = [mods[name].register_forward_hook(lambda m, i, o, name=name: sink.__setitem__(name, o.half()))
             for name in READOUT_LAYERS]
    batches = [np.asarray(images[i:i + a.forward_batch]) for i in range(0, n, a.forward_batch)]  # in memory

    def forward() -> None:
        with torch.inference_mode():
            for x in batches:
                model(network_input(x))

    t_forward = median_time(forward, a.repeats)
    for h in hooks:
        h.remove()
    tree = open_tree(act_path, "activation store")
    layers = D._map_layers(tree, [], act_path)
    group = open_group(act_path, "activation store")
    geometry = {**D.layer_geometry(model), D.PIXELS: D.Geometry(1, 0, 1)}
    kwargs = dict(size=(images.shape[1], images.shape[2]),
                  parts=lambda i, j: torch.from_numpy(np.asarray(parts[i:j])).long(),
                  image_onehot=lambda i, j: torch.zeros((j - i, 0), dtype=torch.float64),
                  quantiles=[0.005], n_labels=len(parts.attrs["part_names"]), n_samples=n,
                  top=4, workers=a.workers)
    dtype = torch.float16 if str(tree.attrs.get("dtype")) == "float16" else torch.float32
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_dissect = median_time(lambda: D.dissect_network(D._store_batches(group, layers, n, a.batch), geometry, dtype=dtype,
                                                desc="bench", **kwargs), a.repeats)
    t_pixels = median_time(lambda: D.dissect_network(D._pixel_batches(images, n, a.batch), geometry,
                                               dtype=torch.float16, desc="bench pixels", **kwargs), a.repeats)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(np.prod(group[name]["activation"].shape) * group[name]["activation"].dtype.itemsize
               for name in layers) / 2**20
    print(f"\n{a.model} on {a.set}: {n} images of {images.shape[1]} px, {len(layers)} map layers "
          f"({size:.0f} MB {tree.attrs.get('dtype')}), {a.threads} threads, {a.workers} worker(s), "
          f"median of {a.repeats}")
    print(f"{'step':<52}{'seconds':>9}{'x forward':>11}")
    print(f"{'anchor: forward pass, every read-out layer':<52}{t_forward:>9.2f}{1:>11.2f}")
    print(f"{'dissection of every map layer (both passes)':<52}{t_dissect:>9.2f}{t_dissect / t_forward:>11.2f}")
    print(f"{'dissection of the pixels':<52}{t_pixels:>9.2f}{t_pixels / t_forward:>11.2f}")
    print(f"bar: dissection <= 2x forward: {'met' if t_dissect <= 2 * t_forward else 'NOT met'}")
    print(f"peak RSS {rss:.0f} MB (before dissecting {rss0:.0f} MB)")


if __name__ == "__main__":
    main()
