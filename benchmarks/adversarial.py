"""The adversarial stage's cost in forward-and-backward passes (issue 17: a k-step attack on the 2,048
analysis images costs at most 1.3 k forward-and-backward passes).

    python benchmarks/adversarial.py --results results [--set analysis] [--models identity_s0]
        [--steps 10] [--budget 8] [--samples 2048] [--batch 128] [--threads 2] [--repeats 3]

Times, on the same images and ensemble in the same run: the anchor, one forward and
backward pass of the ensemble (cross-entropy of the averaged logits, gradient to the
input) over every image; the attack alone (torchattacks' MI-FGSM or PGD, ``steps``
iterations); and the stage's whole per-budget work (attack, uint8 rounding, judging every
model before and after rounding). Prints each as a multiple of k anchors, beside the
1.3 k target, and the number of forward passes each network made (counted by hooks).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from infodissect.activations.extract import load_trained
from infodissect.analyses.adversarial import ENSEMBLE, Ensemble, Spec, attack_images, perturb, target_classes
from infodissect.analyses.relevance import sample_index, true_classes
from infodissect.nets import network_input
from infodissect.stimuli.store import open_stimuli
from infodissect.store import open_group
from timing import median_time


def forward_backward(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch: int) -> None:
    """One forward and backward pass (to the input) over every image: the anchor."""
    for a in range(0, len(images), batch):
        x = network_input(images[a:a + batch]).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels[a:a + batch]))
        torch.autograd.grad(loss, x)


def attack_only(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, targets: np.ndarray,
                spec: Spec, budget: int) -> None:
    for a in range(0, len(images), spec.batch_size):
        b = a + spec.batch_size
        perturb(model, network_input(images[a:b]), torch.from_numpy(labels[a:b]), torch.from_numpy(targets[a:b]),
                budget, spec.attack, spec.steps, spec.seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results")
    ap.add_argument("--set", default="analysis")
    ap.add_argument("--models", nargs="+", default=["identity_s0"])
    ap.add_argument("--attack", default="mifgsm", choices=["mifgsm", "pgd"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = Path(a.results)
    path = res / "stimuli" / f"{a.set}.zarr"
    stim = open_stimuli(path)
    loaded = [load_trained(res / "models" / m / "model.pt") for m in a.models]
    meta = loaded[0][1]
    classes = [str(c) for c in meta["classes"]]
    index = sample_index(int(stim.sizes["sample"]), a.samples)
    images = np.asarray(open_group(path, "stimulus store")["image"].oindex[index])
    labels = true_classes(stim[meta["task"]].values[index], classes, meta["task"], str(path))
    targets = target_classes(labels, stim["sample"].values[index], len(classes), 0)
    ens = Ensemble([m for m, _ in loaded]).eval()
    spec = Spec(budgets=[a.budget], attack=a.attack, steps=a.steps, targeted=True, samples=0, batch_size=a.batch,
                seed=0)
    judges = {name: m for name, (m, _) in zip(a.models, loaded)}
    judges[ENSEMBLE] = ens
    calls = {name: 0 for name in a.models}
    for name, (m, _) in zip(a.models, loaded):
        m.register_forward_hook(lambda mod, i, o, name=name: calls.__setitem__(name, calls[name] + len(o)))

    print(f"{platform.processor() or platform.machine()}, {a.threads} threads, torch {torch.__version__}; "
          f"{len(images)} images of {a.set} ({images.shape[1]} px), ensemble {a.models}, {a.attack}, "
          f"{a.steps} steps, budget {a.budget}/255, batch {a.batch}")
    forward_backward(ens, images[:a.batch], labels[:a.batch], a.batch)  # warm-up
    t_fb = median_time(lambda: forward_backward(ens, images, labels, a.batch), a.repeats)
    calls.update({k: 0 for k in calls})
    t_attack = median_time(lambda: attack_only(ens, images, labels, targets, spec, a.budget), a.repeats)
    attack_calls = {k: v // a.repeats for k, v in calls.items()}
    calls.update({k: 0 for k in calls})
    t0 = time.perf_counter()
    out = attack_images(ens, judges, images, true=labels, target=targets, spec=spec, budget=a.budget)
    t_stage = time.perf_counter() - t0
    stage_calls = dict(calls)
    k = a.steps
    print(f"anchor: one forward + backward pass of the ensemble over the images: {t_fb:.2f} s "
          f"({len(images) / t_fb:.0f} images/s)")
    for name, t, c in (("attack (torchattacks)", t_attack, attack_calls),
                       ("stage per budget (attack, rounding, judging)", t_stage, stage_calls)):
        ratio = t / (k * t_fb)
        print(f"{name}: {t:.2f} s = {ratio:.2f} k forward-and-backward passes (k = {k}) "
              f"[target <= 1.3 k: {'met' if ratio <= 1.3 else 'not met'}]; images through each network: "
              + ", ".join(f"{m} {v / len(images):.1f}x" for m, v in c.items()))
    print(f"targeted success (stored uint8, ensemble): {100 * out['rounded'][ENSEMBLE].mean():.1f}%")


if __name__ == "__main__":
    main()
