"""Training of one model, on one process or across several with DistributedDataParallel.

Run it under ``torchrun`` (the Snakemake rule does): each process reads RANK and
WORLD_SIZE from the environment, joins a process group (NCCL on CUDA, Gloo on CPU)
and trains on its slice of every global batch (:class:`~.data.StoreBatches`);
DistributedDataParallel averages the gradients, and batch norm uses statistics of
the whole global batch (:class:`GlobalBatchNorm2d`), so W processes compute what one
process computes on the same global batch. On CUDA the forward runs in bf16.

Every epoch rank 0 writes a checkpoint (atomically) to a directory Snakemake does
not manage; a rerun of a killed job resumes from it when its spec matches. The
final files appear only after the last epoch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import logging
import math
import os
import pickle
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import faults
from ..nets import READOUT_LAYERS, build_model
from ..store import atomic_file, digest, open_group, write_text
from .data import Labels, RenderedBatches, StoreBatches, task_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """Everything a trained model depends on besides its data."""

    task: str = "identity"
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: int = 64
    stem: str = "large"
    window: int = 4
    source: str = "stored"
    render: dict = field(default_factory=dict)
    snapshots: list = field(default_factory=list)  # epochs whose weights are kept (0 = before training)
    adversarial: dict = field(default_factory=dict)  # {} = plain training; else budget, steps, layer, weight

    @staticmethod
    def from_json(text: str) -> "TrainSpec":
        return TrainSpec(**json.loads(text))

    def digest(self) -> str:
        """A short hash of the spec (a checkpoint resumes only under the same spec)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device


def init_distributed() -> Dist:
    """Join the torchrun process group (if any); the device is this rank's GPU or the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, device)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics span the global batch of all processes.

    Identical to :class:`torch.nn.BatchNorm2d` on one process; across processes the
    per-channel sums are all-reduced (differentiably), on CPU (Gloo) as on CUDA.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        x = x.float()
        n_local = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n_local])
        stats = all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        shape = (1, c, 1, 1)
        return ((x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps) * self.weight.view(shape)
                + self.bias.view(shape))


def with_global_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm2d made a :class:`GlobalBatchNorm2d` (same parameters and buffers)."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            g = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            g.load_state_dict(child.state_dict())
            setattr(model, name, g)
        else:
            with_global_batch_norm(child)
    return model


# --------------------------------------------------------------------------- training


def _lr(spec: TrainSpec, step: int, total: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 0."""
    warm = max(1, total // 20)
    if step < warm:
        return spec.lr * (step + 1) / warm
    return spec.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


ATTEMPTS_LOG = "attempts.log"  # in the checkpoint directory: every attempt's log, appended


def keep_attempt_log(checkpoints: str | Path) -> Path:
    """Append this process's log (rank 0) to ``<checkpoints>/attempts.log``, under a header naming the attempt.

    The job's own log (Snakemake's ``log:``) is replaced by each rerun; the checkpoint
    directory is kept across reruns, so a killed attempt's log survives there.
    """
    path = Path(checkpoints) / ATTEMPTS_LOG
    if os.environ.get("RANK", "0") != "0":
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    log.info("=== attempt: pid %d on %s, world size %s", os.getpid(), os.uname().nodename,
             os.environ.get("WORLD_SIZE", "1"))
    return path


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def evaluate(model: nn.Module, batches: StoreBatches, device: torch.device) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and per-sample predictions of ``model`` on one rank's batches (all samples, in order)."""
    model.eval()
    total, correct, loss, preds = 0, 0, 0.0, []
    with torch.inference_mode():
        for x, y in batches.epoch(0):
            out = model(x.to(device)).float()
            y = y.to(device)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            p = out.argmax(1)
            correct += int((p == y).sum())
            total += len(y)
            preds.append(p.cpu().numpy())
    return loss / max(total, 1), correct / max(total, 1), np.concatenate(preds) if preds else np.zeros(0, int)


def _global_sums(values: list[float], ctx: Any) -> list[float]:
    """Sums over all ranks of per-rank running totals."""
    counts = torch.tensor(values, dtype=torch.float64)
    if ctx.world > 1:
        counts = counts.to(ctx.device)
        dist.all_reduce(counts)
    return counts.tolist()


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA; nothing on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def train_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, amp: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch: forward (under ``amp``), cross-entropy, backward, update. Returns (loss, logits)."""
    with amp:
        out = net(x)
    loss = F.cross_entropy(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), out.detach()


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, steps: int
                         ) -> torch.Tensor:
    """Untargeted PGD (torchattacks; from the clean image, no random start, so each image's attack is the same on
    any number of processes; step 2.5 x budget / steps) within ``budget``/255 of ``x``, run on the plain module in
    eval mode (running batch-norm statistics, no DDP hooks), then back to train mode."""
    import torchattacks

    was_training = model.training
    model.eval()
    eps = budget / 255.0
    x_adv = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=False)(x, y)
    model.train(was_training)
    return x_adv.detach()


def consistency_step(net: nn.Module, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                     amp: Any, adv: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of adversarial training with a consistency loss (after Dong et al., arXiv:1708.05493):
    cross-entropy on the clean and on the adversarial images, plus ``weight`` times the mean over images of the
    squared distance between their representations at ``layer`` over the clean one's squared norm (a mean of
    per-image terms, so that any number of processes computes the same). Returns (loss, clean logits)."""
    from ..nets import readout_modules

    x_adv = adversarial_examples(model, x, y, adv["budget"], adv["steps"])
    kept: list[torch.Tensor] = []
    hook = readout_modules(model)[adv["layer"]].register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        with amp:
            out = net(torch.cat([x, x_adv]))
    finally:
        hook.remove()
    n = len(x)
    h = kept[0].float().flatten(1)
    consistency = (((h[:n] - h[n:]) ** 2).sum(1) / (h[:n].detach() ** 2).sum(1).clamp_min(1e-12)).mean()
    loss = F.cross_entropy(out[:n].float(), y) + F.cross_entropy(out[n:].float(), y) + adv["weight"] * consistency
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), out[:n].detach()


@dataclass
class Checkpoint:
    """The last checkpoint of a run (``<checkpoints>/last.pt``) and what makes it this run's: the spec's digest,
    the process count and the digests of the training and test stores."""

    path: Path
    spec: str
    world: int
    data: dict[str, str]
    task: str = ""  # for the log

    def resume(self, model: nn.Module, opt: torch.optim.Optimizer, ctx: Dist
               ) -> tuple[list[dict[str, Any]], int, int, list[float]]:
        """Load this run's checkpoint into ``model`` and ``opt``: (history, epoch, step, running sums);
        a fresh start when there is none or it was made by another run."""
        fresh: tuple[list[dict[str, Any]], int, int, list[float]] = ([], 0, 0, [0.0, 0.0, 0.0])
        if not self.path.exists():
            return fresh
        try:
            state = torch.load(self.path, map_location=ctx.device, weights_only=False)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
            log.warning("ignoring checkpoint %s: unreadable (%s); training starts over", self.path, exc)
            return fresh
        if (state.get("spec"), state.get("world"), state.get("data")) != (self.spec, self.world, self.data):
            log.info("ignoring checkpoint %s: made for another spec, process count or training data", self.path)
            return fresh
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        # The global running totals of the interrupted epoch, counted once (on rank 0).
        running = list(state.get("running", fresh[3])) if ctx.rank == 0 else fresh[3]
        log.info("resuming %s from epoch %d, step %d (%s)", self.task, state["epoch"], state.get("step", 0),
                 self.path)
        return state["history"], state["epoch"], state.get("step", 0), running

    def save(self, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, step: int, sums: list[float],
             history: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
                      "running": sums, "history": history, "spec": self.spec, "world": self.world,
                      "data": self.data}, self.path)


def _batches(spec: TrainSpec, train_store: str | Path, test_store: str | Path, labels: Labels, test_labels: Labels,
             ctx: Dist) -> tuple[StoreBatches, StoreBatches]:
    """This process's training batches (stored images, or the design table rendered on this device) and the
    test batches."""
    if spec.source == "rendered":  # render the design table's batches on this device, never on disk
        data: StoreBatches = RenderedBatches(train_store, labels, spec.batch_size, spec.render, ctx.rank, ctx.world,
                                             spec.seed, spec.window, ctx.device)
    else:
        data = StoreBatches(train_store, labels, spec.batch_size, ctx.rank, ctx.world, spec.seed, spec.window)
    if len(data) == 0:
        raise ValueError(f"{train_store}: fewer samples than one batch of {spec.batch_size}")
    test = StoreBatches(test_store, test_labels, spec.batch_size, 0, 1, spec.seed, spec.window, shuffle=False,
                        drop_last=False)
    return data, test


def _network(spec: TrainSpec, classes: int, train_store: str | Path, ctx: Dist
             ) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The seeded ResNet-10 (global batch norm across processes) on this process's device, and its optimizer."""
    if spec.source == "rendered":
        channels = 1 if spec.render["render"]["color"] == "gray" else 3
    else:
        channels = open_group(train_store, "stimulus store")["image"].shape[-1]
    torch.manual_seed(spec.seed)
    model = build_model(classes, width=spec.width, stem=spec.stem, in_channels=channels)
    if ctx.world > 1:
        model = with_global_batch_norm(model)
    model.to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                          nesterov=True)
    return model, opt


def train(spec: TrainSpec, train_store: str | Path, test_store: str | Path, out_dir: str | Path,
          checkpoints: str | Path, checkpoint_steps: int = 0) -> dict[str, float]:
    """Train ``spec`` on ``train_store``, evaluating on ``test_store``; write the model and metrics to ``out_dir``.

    ``train_store`` holds rendered images, or (``spec.source == "rendered"``) it is the
    set's design table and batches are rendered on the fly with ``spec.render``. A
    checkpoint is written after every epoch and, with ``checkpoint_steps`` > 0, every
    that many steps within an epoch; a rerun resumes from the last one exactly, if it
    was made by the same spec on the same data (:class:`Checkpoint`).
    """
    from ..stimuli.store import open_stimuli

    # Stores from another generator version, unfinished, damaged or not stimulus stores stop here, before any work.
    open_stimuli(train_store, require=("identity_shape",) if spec.source == "rendered" else ("image",))
    open_stimuli(test_store, require=("image",))
    ctx = init_distributed()
    if ctx.rank == 0:
        log.info("training %s_s%d on %d process(es), %s (%s)", spec.task, spec.seed, ctx.world, ctx.device,
                 "NCCL" if ctx.device.type == "cuda" and ctx.world > 1 else "Gloo" if ctx.world > 1 else "single")
        if spec.adversarial:
            log.info("adversarial training: PGD %d/255 in %d steps, consistency loss at %s, weight %g",
                     spec.adversarial["budget"], spec.adversarial["steps"], spec.adversarial["layer"],
                     spec.adversarial["weight"])
    labels = task_labels(train_store, spec.task)
    test_labels = task_labels(test_store, spec.task, labels.classes)
    model, opt = _network(spec, len(labels.classes), train_store, ctx)
    data, test = _batches(spec, train_store, test_store, labels, test_labels, ctx)
    ckpt = Checkpoint(Path(checkpoints) / "last.pt", spec.digest(), ctx.world,
                      {"train": digest(train_store), "test": digest(test_store)}, spec.task)
    history, start, start_step, running = ckpt.resume(model, opt, ctx)
    net = (nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
           if ctx.world > 1 else model)
    amp = autocast(ctx.device)
    total_steps = spec.epochs * len(data)
    if ctx.rank == 0 and start == 0 and start_step == 0 and 0 in spec.snapshots:
        save_snapshot(Path(checkpoints), spec, model, labels, 0)
    for epoch in range(start, spec.epochs):
        t0 = time.perf_counter()
        net.train()
        first = start_step if epoch == start else 0
        loss_sum, correct, seen = running if epoch == start else (0.0, 0.0, 0.0)
        for i, (x, y) in enumerate(data.epoch(epoch, first), start=first):
            for g in opt.param_groups:
                g["lr"] = _lr(spec, epoch * len(data) + i, total_steps)
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            if spec.adversarial:
                loss, out = consistency_step(net, model, opt, x, y, amp, spec.adversarial)
            else:
                loss, out = train_step(net, opt, x, y, amp)
            loss_sum += float(loss) * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
            if checkpoint_steps and (i + 1) % checkpoint_steps == 0 and i + 1 < len(data):
                sums = _global_sums([loss_sum, correct, seen], ctx)
                if ctx.rank == 0:
                    ckpt.save(model, opt, epoch, i + 1, sums, history)
                faults.checkpoint("step", epoch * len(data) + i + 1)
        loss_sum, correct, seen = _global_sums([loss_sum, correct, seen], ctx)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen}
        if ctx.rank == 0:
            row["test_loss"], row["test_accuracy"], _ = evaluate(model, test, ctx.device)
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            log.info("epoch %d/%d: train loss %.3f acc %.3f, test loss %.3f acc %.3f (%.1f s)", epoch + 1,
                     spec.epochs, row["train_loss"], row["train_accuracy"], row["test_loss"],
                     row["test_accuracy"], row["seconds"])
            if epoch + 1 in spec.snapshots:  # before the checkpoint: a resumed run has every earlier snapshot
                save_snapshot(Path(checkpoints), spec, model, labels, epoch + 1)
            ckpt.save(model, opt, epoch + 1, 0, [0.0, 0.0, 0.0], history)
        faults.checkpoint("epoch", epoch + 1)
        if ctx.world > 1:
            dist.barrier()
    result: dict[str, float] = {}
    if ctx.rank == 0:
        _, acc, preds = evaluate(model, test, ctx.device)
        _write_outputs(Path(out_dir), spec, model, labels, history, test_store, test_labels, preds)
        publish_snapshots(Path(checkpoints), Path(out_dir), spec.snapshots)
        result = {"test_accuracy": acc}
    if ctx.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights on the CPU (GlobalBatchNorm2d saves as BatchNorm2d)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _model_file(spec: TrainSpec, model: nn.Module, labels: Labels) -> dict[str, Any]:
    """What model.pt (and each snapshot) holds."""
    return {"state_dict": plain_state_dict(model), "classes": list(labels.classes), "task": spec.task,
            "spec": asdict(spec), "readout_layers": list(READOUT_LAYERS), "architecture": "ResNet10"}


def snapshot_path(out_dir: str | Path, epoch: int) -> Path:
    """Where the weights after ``epoch`` epochs are kept (``training.snapshots``)."""
    return Path(out_dir) / "snapshots" / f"epoch{epoch}.pt"


def save_snapshot(checkpoints: Path, spec: TrainSpec, model: nn.Module, labels: Labels, epoch: int) -> None:
    """The weights after ``epoch`` epochs, in model.pt's format (plus ``epoch``), kept beside the checkpoint
    (which a workflow manager does not delete when a job fails) until training ends."""
    snapshot_path(checkpoints, epoch).parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({**_model_file(spec, model, labels), "epoch": epoch}, snapshot_path(checkpoints, epoch))
    log.info("kept the weights after epoch %d: %s", epoch, snapshot_path(checkpoints, epoch))


def publish_snapshots(checkpoints: Path, out_dir: Path, epochs: list[int]) -> None:
    """Copy every kept snapshot into the model's directory (``snapshots/epoch{E}.pt``) once training ends."""
    for epoch in sorted(epochs):
        src = snapshot_path(checkpoints, epoch)
        if not src.exists():
            raise FileNotFoundError(f"{src}: the snapshot of epoch {epoch} is missing (its checkpoint directory was "
                                    f"changed); delete {checkpoints} to train the model again")
        snapshot_path(out_dir, epoch).parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(snapshot_path(out_dir, epoch)) as tmp:
            shutil.copyfile(src, tmp)


def _write_outputs(out_dir: Path, spec: TrainSpec, model: nn.Module, labels: Labels, history: list[dict],
                   test_store: str | Path, test_labels: Labels, preds: np.ndarray) -> None:
    """model.pt, metrics.csv, accuracy_by_factor.csv, config.json (each written whole, then renamed)."""
    write_text(out_dir / "config.json", json.dumps({"spec": asdict(spec), "classes": list(labels.classes),
                                                   "test_store": str(test_store)}, indent=1, sort_keys=True))
    _atomic_save(_model_file(spec, model, labels), out_dir / "model.pt")
    _write_csv(out_dir / "metrics.csv", history)
    _write_csv(out_dir / "accuracy_by_factor.csv", accuracy_by_factor(test_store, test_labels.index, preds))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["empty"])
        w.writeheader()
        w.writerows(rows)


def accuracy_by_factor(test_store: str | Path, truth: np.ndarray, preds: np.ndarray, bins: int = 5
                       ) -> list[dict[str, Any]]:
    """Held-out accuracy per level of each categorical factor and per quantile bin of each continuous one."""
    group = open_group(test_store, "stimulus store")
    factors = json.loads(group.attrs.get("factors", "{}"))
    ok = truth == preds
    rows = []
    for name, info in sorted(factors.items()):
        if name not in group:
            continue
        values = np.asarray(group[name][:])
        if info.get("kind") == "categorical":
            levels = [str(v) for v in values.tolist()]
            for level in sorted(set(levels)):
                m = np.asarray([v == level for v in levels])
                rows.append({"factor": name, "level": level, "low": "", "high": "", "n": int(m.sum()),
                             "accuracy": float(ok[m].mean())})
        else:
            values = values.astype(float)
            if np.ptp(values) == 0:
                continue
            edges = np.quantile(values, np.linspace(0, 1, bins + 1))
            which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
            for b in range(bins):
                m = which == b
                if m.any():
                    rows.append({"factor": name, "level": f"bin{b}", "low": float(edges[b]),
                                 "high": float(edges[b + 1]), "n": int(m.sum()), "accuracy": float(ok[m].mean())})
    return rows
