"""What the relevance stage costs, against its anchors: maps against a forward + backward pass, masking against Quantus.

    python benchmarks/relevance.py [--results /tmp/demo4/results] [--model identity_s0] [--set test]
                                   [--samples 2048] [--threads 2] [--repeats 3]
                                   [--quantus-images 64] [--masking-samples 512]

Needs a trained model and a stimulus store (the demo's outputs; the default paths are the
demo run in /tmp/demo4). The set's images are taken cyclically up to ``--samples`` if it
holds fewer. Prints, in one run:

1. **maps** (bar: relevance maps for 2,048 images at most 3x the time of a forward and
   backward pass): the anchor, one forward + backward pass of the model over the
   ``--samples`` images in batches of 128 (the gradient of the summed true-class logits
   with respect to the input), and :func:`infodissect.analyses.relevance.relevance_maps` of
   each method of :data:`infodissect.nets.lrp.METHODS` on the same batches; seconds (median
   of ``--repeats``, all taken in turn after a one-batch warm-up) and the ratio to the anchor.
2. **masking** (bar: the masking curves at least 10x faster than Quantus's
   ``RegionPerturbation`` on the same images and settings, with the same values): the
   anchor, Quantus's ``RegionPerturbation`` on the first ``--quantus-images`` images, and
   ours (``patch_scores`` -> ``removal_order`` -> ``removed_masks`` -> ``masked_logits``) on
   the same images, in the same settings: 4 px patches at 64 px (256 patches), MoRF order,
   one patch per step (``steps`` = ``regions_evaluation`` = 256), removed pixels set to
   the constant 0.5, the ``epsilon_plus_flat`` maps summed over colour channels, the
   true-class logit (``softmax=False``). Quantus's curve is ``y(x) - y(x, first k patches
   removed)`` for k = 1..256; ours is the logit at steps 0..256, so the check compares
   Quantus's curve with ``logit[0] - logit[k]`` (the largest difference must stay below
   1e-4 of the largest logit). Both run ``--masking-repeats`` times (1; median, taken in
   turn), after a forward pass of that batch shape. Quantus 0.6 masks a whole batch per
   step (``batch_size``, 64 by default), so on the same few images both do one forward of
   the same batch per step. Ours is also timed once on ``--masking-samples`` images (512
   by default) in the stage's batches of 128; its per-image cost is flat from one full
   batch on (one batched forward per step per batch).

Quantus (the ``bench`` extra): ``pip install quantus`` (0.6.0 pulls opencv-python,
scikit-image, cachetools, imageio and tifffile and leaves torch alone). Quantus imports
zennit when it is installed, and zennit imports torchvision; where zennit is installed
without torchvision this script hides zennit from Quantus (it only uses Quantus's metric).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from infodissect.activations.extract import load_trained
from infodissect.analyses import relevance as R
from infodissect.nets import network_input
from infodissect.nets.lrp import METHODS
from infodissect.stimuli.store import open_stimuli

BATCH = 128
MAPS_BAR, MASKING_BAR = 3.0, 10.0


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def import_quantus():
    """Quantus, with zennit hidden from it where zennit is installed without torchvision (which it imports)."""
    if importlib.util.find_spec("zennit") is not None and importlib.util.find_spec("torchvision") is None:
        sys.modules["zennit"] = None  # find_spec("zennit") is then None: Quantus skips its zennit explainers
    import quantus

    return quantus


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict]:
    """Median wall time (seconds) of ``repeats`` calls of each function, the calls taken in turn (one round of
    every function, then the next), so that a load that comes and goes on the machine hits them alike; and each
    function's last result."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    last: dict[str, object] = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            last[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, last


def forward_backward(model: torch.nn.Module, batches, target: np.ndarray) -> None:
    """The anchor: the gradient of the summed true-class logits with respect to the input, batch by batch."""
    for a, b, x in batches():
        x = x.requires_grad_(True)
        out = model(x)
        torch.autograd.grad(out.gather(1, torch.from_numpy(target[a:b]).view(-1, 1)).sum(), x)


def our_curves(model: torch.nn.Module, images: np.ndarray, target: np.ndarray, rel: np.ndarray, patch: int,
               steps: int, fill: float) -> np.ndarray:
    """The true-class logit (step, sample) at steps 0..steps of MoRF masking, as the stage computes it."""
    n = len(target)
    h, w = rel.shape[1:]
    grid = (h // patch, w // patch)
    logit = np.zeros((steps + 1, n), np.float32)
    for a, b, x in R.input_batches(images, n, BATCH)():
        order = R.removal_order(R.patch_scores(rel[a:b], patch), "morf", 0)
        masks = R.removed_masks(order, steps, grid, patch)
        lg, _ = R.masked_logits([model], x, torch.full_like(x, fill), masks, [torch.from_numpy(target[a:b])])
        logit[:, a:b] = lg[0]
    return logit


def quantus_order(quantus, x: np.ndarray, rel: np.ndarray, patch: int) -> np.ndarray:
    """Patch removal order (sample, patch) as ``RegionPerturbation.evaluate_batch`` computes it (MoRF):
    the map broadcast over the channels, summed over each block of ``get_block_indices``, ``np.argsort(-sum)``."""
    n = len(x)
    a = np.broadcast_to(rel[:, None], x.shape).reshape(n, -1)
    sums = np.stack([a[np.arange(n)[:, None], idx].sum(-1)
                     for idx in quantus.helpers.utils.get_block_indices(x, patch)], -1)
    return np.argsort(-sums, -1)


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="/tmp/demo4/results")
    ap.add_argument("--model", default="identity_s0")
    ap.add_argument("--set", default="test")
    ap.add_argument("--samples", type=int, default=2048, help="images for the maps (the set taken cyclically)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quantus-images", type=int, default=64,
                    help="images Quantus and ours mask (64: one of Quantus's batches)")
    ap.add_argument("--masking-repeats", type=int, default=1, help="runs of Quantus and ours on those images")
    ap.add_argument("--quantus-batch", type=int, default=64, help="RegionPerturbation batch_size (its default)")
    ap.add_argument("--masking-samples", type=int, default=512,
                    help="images ours alone masks in batches of 128 (its per-image cost is flat from one batch on)")
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--fill", type=float, default=0.5, help="the constant removed pixels become (both)")
    a = ap.parse_args()
    a.masking_samples = a.samples if a.masking_samples is None else a.masking_samples
    torch.set_num_threads(a.threads)
    quantus = import_quantus()

    r = Path(a.results)
    model_path, stim_path = r / "models" / a.model / "model.pt", r / "stimuli" / f"{a.set}.zarr"
    model, meta = load_trained(model_path)
    task = str(meta["task"])
    stim = open_stimuli(stim_path, require=("image", task))
    total = int(stim.sizes["sample"])
    take = np.arange(max(a.samples, a.masking_samples, a.quantus_images)) % total
    images = np.asarray(stim["image"].values)[take]  # in memory: (sample, y, x, channel) uint8
    target = R.true_classes(stim[task].values[take], [str(c) for c in meta["classes"]], task, str(stim_path))
    h, w = images.shape[1:3]

    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), {a.threads} torch threads; torch {torch.__version__}, "
          f"numpy {np.__version__}, quantus {quantus.__version__}, python {platform.python_version()}")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"model {a.model} ({task}, {len(meta['classes'])} classes); set {a.set}: {total} images of {h} x {w} px, "
          f"taken cyclically")

    # ------------------------------------------------------------------ 1. maps against forward + backward
    n = a.samples
    batches = R.input_batches(images, n, BATCH)
    warm = R.input_batches(images, min(n, BATCH), BATCH)
    fns = {"anchor": lambda: forward_backward(model, batches, target[:n])}
    fns.update({m: (lambda m=m: R.relevance_maps(model, batches, target[:n], [m])) for m in METHODS})
    forward_backward(model, warm, target)  # warm-up: one batch each
    for m in METHODS:
        R.relevance_maps(model, warm, target[:min(n, BATCH)], [m])
    times, _ = interleaved_medians(fns, a.repeats)
    t_anchor = times["anchor"]
    print(f"\n1. relevance maps of {n} images in batches of {BATCH} "
          f"(median of {a.repeats}, taken in turn, after a one-batch warm-up)")
    print(f"{'':<52}{'seconds':>9}{'x anchor':>10}")
    print(f"{'anchor: forward + backward (d true logit / d input)':<52}{t_anchor:>9.2f}{1:>10.2f}")
    for method in METHODS:
        ratio = times[method] / t_anchor
        print(f"{'relevance_maps ' + method:<52}{times[method]:>9.2f}{ratio:>10.2f}"
              f"  [bar <= {MAPS_BAR:g}x: {met(ratio <= MAPS_BAR)}]")

    # ------------------------------------------------------------------ 2. masking curves against Quantus
    nq, steps = a.quantus_images, (h // a.patch) * (w // a.patch)
    rel = R.relevance_maps(model, R.input_batches(images, max(nq, a.masking_samples), BATCH),
                           target[:max(nq, a.masking_samples)], ["epsilon_plus_flat"])["relevance"][0]
    xq = network_input(images[:nq]).numpy()
    metric = quantus.RegionPerturbation(patch_size=a.patch, order="morf", regions_evaluation=steps, abs=False,
                                        normalise=False, perturb_baseline=float(a.fill), disable_warnings=True,
                                        display_progressbar=False)

    def run_quantus() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-step "perturbation caused no change" checks
            return np.asarray(metric(model=model, x_batch=xq, y_batch=target[:nq], a_batch=rel[:nq, None],
                                     channel_first=True, softmax=False, device="cpu", batch_size=a.quantus_batch))

    def run_ours() -> np.ndarray:
        return our_curves(model, images[:nq], target[:nq], rel[:nq], a.patch, steps, a.fill)

    with torch.inference_mode():
        model(torch.from_numpy(xq))  # warm-up of this batch shape
    t2, last = interleaved_medians({"quantus": run_quantus, "ours": run_ours}, a.masking_repeats)
    t_q, t_o, q, ours = t2["quantus"], t2["ours"], last["quantus"], last["ours"]
    nm = a.masking_samples
    t0 = time.perf_counter()
    our_curves(model, images[:nm], target[:nm], rel[:nm], a.patch, steps, a.fill)
    t_all = time.perf_counter() - t0

    same_order = np.all(quantus_order(quantus, xq, rel[:nq], a.patch)
                        == R.removal_order(R.patch_scores(rel[:nq], a.patch), "morf", 0), axis=1)
    curve = (ours[:1] - ours[1:]).T  # (sample, step 1..steps): Quantus's quantity
    diff = float(np.abs(q - curve).max())
    scale = float(np.abs(ours[0]).max())
    print(f"\n2. masking curves: {a.patch} px patches ({steps}), MoRF, one patch per step ({steps} steps), "
          f"fill {a.fill:g}, epsilon_plus_flat maps, true-class logit")
    print(f"Quantus RegionPerturbation(patch_size={a.patch}, order='morf', regions_evaluation={steps}, abs=False, "
          f"normalise=False, perturb_baseline={a.fill:g}), softmax=False, batch_size={a.quantus_batch}")
    print(f"values: Quantus returns {q.shape[1]} values per image (y0 - y_k, k = 1..{q.shape[1]}), "
          f"ours {ours.shape[0]} logits (steps 0..{steps}); same removal order in {int(same_order.sum())}/{nq} "
          f"images; max |Quantus - (ours[0] - ours[k])| = {diff:.2e} (largest logit {scale:.2f}, "
          f"relative {diff / scale:.1e})")
    print(f"{'':<52}{'images':>7}{'seconds':>9}{'ms/image':>10}{'speed-up':>10}")
    rows = [("anchor: Quantus RegionPerturbation", nq, t_q), ("ours, the same images", nq, t_o),
            (f"ours, batches of {BATCH}", nm, t_all)]
    per_q = t_q / nq
    for name, k, t in rows:
        up = per_q / (t / k)
        bar = "" if name.startswith("anchor") else f"  [bar >= {MASKING_BAR:g}x: {met(up >= MASKING_BAR)}]"
        print(f"{name:<52}{k:>7}{t:>9.2f}{1000 * t / k:>10.1f}{up:>10.2f}{bar}")
    print(f"(median of {a.masking_repeats} for the {nq} images, one run for the {nm})")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    assert diff <= 1e-4 * scale, f"Quantus's curves and ours differ by {diff:.3g} (logit scale {scale:.3g})"


if __name__ == "__main__":
    main()
