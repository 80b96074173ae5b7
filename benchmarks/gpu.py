"""The one GPU check (issue 18): what the pipeline's CUDA paths do on this machine, in one table.

    bash benchmarks/gpu.sh            # sets up, then runs this; or, set up already:
    python benchmarks/gpu.py [--quick]

Measures, on the first CUDA device, each figure beside its target:
  render         images/s at 64 and 224 px (the demo generator, every factor varying) with the
                 fused Triton kernels that CUDA renders with, and with the PyTorch path;
  render check   CUDA renders against the CPU renderer's on the same faces, and the Triton
                 kernels against the PyTorch path on the same vertex stage (tolerance below);
  training       images/s at 64 and 224 px, bf16, one GPU: fed from memory and rendered on the
                 fly from a design table (target: on the fly >= 80% of from memory at 224 px);
  extraction     images/s of the activation stage (every read-out layer into Zarr, float16);
  MI             the MI kernels on CUDA against the CPU (NumPy) on workloads 1 and 3 of
                 benchmarks/mi.py: seconds, speed-up and the largest difference in bits;
  DDP check      the training stage launched by torchrun on 1 GPU (CUDA, bf16) against
                 2 Gloo processes on the CPU (float32), same data, spec and seed: the first
                 epoch's training loss within bf16's tolerance.
Exits 0 when every check passes, 1 when one fails, BROKE (2) when a measurement raised
(its traceback printed), and NO_CUDA (3) with a one-line message on a machine without a
CUDA device. A section that raises gets a BROKE row and the others still run; sections not
started within --budget seconds (420) are skipped. --quick shrinks every workload (a smoke run);
--cpu runs every section on the CPU (a dry run of the script where there is no GPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
BROKE, NO_CUDA = 2, 3

# Documented tolerances (README.md, "GPU"): float32 rasterisation on the GPU may round a
# sample's depth or colour differently from the CPU's compiled path at triangle edges.
RENDER_MAX_PIXELS_OFF = 0.002   # share of pixel values more than 2 grey levels from the CPU's
RENDER_MAX_LABELS_OFF = 0.002   # share of part labels that differ
DDP_LOSS_RTOL = 0.03            # bf16 vs float32 training loss after one short epoch
MI_MAX_DIFF_BITS = 1e-3         # CUDA (float32 kernels) vs CPU


@dataclass
class Row:
    """One line of the table: a figure (or check) beside its target."""

    name: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: a figure with no pass/fail
    broke: bool = False  # its measurement raised, or was not reached

    def line(self) -> str:
        mark = "BROKE" if self.broke else {True: "ok", False: "FAILED", None: ""}[self.ok]
        return f"{self.name:<44} {self.value:>26}  {self.target:<34} {mark}"


def cuda_device() -> torch.device | None:
    """The first CUDA device, or None."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up, and its last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


# --------------------------------------------------------------------------- rendering


def render_rate(model, resolution: int, batch: int, repeats: int, backend: str = "auto") -> float:
    """Images/s of rendering ``batch`` random faces at ``resolution`` on the model's device."""
    from render import throughput

    from infodissect.faces.render import Camera

    median, _ = throughput(model, Camera(resolution=resolution, antialias=2), batch, repeats, backend)
    return median


def render_agreement(ref_model, model, resolution: int, n: int, backend: str = "auto", reference: str = "auto"
                     ) -> dict[str, float]:
    """How far ``model``'s renders (on its device, with ``backend``: on CUDA the fused Triton kernels) are from
    ``ref_model``'s (with ``reference``: on the CPU its compiled path), on the same ``n`` random faces."""
    from render import random_params

    from infodissect.faces.render import Camera, render

    camera = Camera(resolution=resolution, antialias=2)
    p = random_params(ref_model, n, torch.device("cpu"), seed=7)
    with torch.inference_mode():
        ref_img, ref_lab = render(ref_model, {k: v.to(ref_model.device) for k, v in p.items()}, camera,
                                  backend=reference)
        img, lab = render(model, {k: v.to(model.device) for k, v in p.items()}, camera, backend=backend)
        ref_img, ref_lab = ref_img.cpu(), ref_lab.cpu()
    diff = (img.cpu().to(torch.int16) - ref_img.to(torch.int16)).abs()
    return {"pixels_off": float((diff > 2).float().mean()), "max_diff": float(diff.max()),
            "labels_off": float((lab.cpu() != ref_lab).float().mean())}


# --------------------------------------------------------------------------- stores


def demo_config() -> dict:
    from infodissect.config import load_config

    return load_config(ROOT / "config" / "config.yaml")


def make_set(tmp: Path, config: dict, resolution: int, identities: int, per_identity: int, device: str) -> tuple[Path, Path]:
    """A crossed training design (``identities`` x ``per_identity``) and its store rendered at ``resolution``,
    through the stimulus stage's own functions: (design, store)."""
    from infodissect.stimuli.design import write_design
    from infodissect.stimuli.store import render_in_memory
    from infodissect.store import save_dataset

    st = config["stimuli"]
    name = f"train{resolution}"
    spec = {"seed": config["seed"], "identities": identities, "heldout_identities": 0, "generator": st["generator"],
            "factors": st["factors"], "set": dict(st["sets"]["train"], samples_per_identity=per_identity)}
    design = write_design(name, spec, tmp / "designs" / f"{name}.zarr")
    render = render_spec(config, resolution, device)
    ds = render_in_memory(design, render).drop_encoding()  # (the design table's chunks are not the store's)
    store = save_dataset(ds.chunk({"sample": 128}), tmp / f"{name}.zarr", inputs=[design])
    return design, store


def render_spec(config: dict, resolution: int, device: str) -> dict:
    from infodissect.faces.version import GENERATOR_VERSION

    st = config["stimuli"]
    return {"generator": st["generator"], "render": dict(st["render"], resolution=resolution, device=device),
            "version": GENERATOR_VERSION}


# --------------------------------------------------------------------------- training and extraction


def train_rates(config: dict, design: Path, store: Path, resolution: int, device: torch.device, steps: int,
                batch: int) -> dict[str, float]:
    """Training images/s (bf16 on CUDA) fed from memory and rendered on the fly, as benchmarks/train.py measures."""
    from train import forever, in_memory, rate

    from infodissect.nets import build_model
    from infodissect.train.data import RenderedBatches, task_labels
    from infodissect.train.loop import autocast, train_step

    t = config["training"]
    labels = task_labels(store, "identity")
    model = build_model(len(labels.classes), width=64, stem=t["stem"], in_channels=3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = autocast(device)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(model, opt, x, y, amp)

    memory = rate(in_memory(store, labels.index, batch), batch, steps, step, device)
    rendered = RenderedBatches(design, labels, batch, render_spec(config, resolution, device.type),
                               window=t["window"], device=device)
    fly = rate(forever(rendered), batch, steps, step, device)
    return {"memory": memory, "fly": fly}


def paper_gpu_hours(images_per_s: float) -> tuple[float, int]:
    """GPU-hours that config/paper.yaml's training (its epochs over its 26M-row training design) takes at
    ``images_per_s`` on one GPU (training at 224 px rendered on the fly), and its GPUs per model."""
    from infodissect.config import load_config
    from infodissect.stimuli.design import design_size

    paper = load_config(ROOT / "config" / "paper.yaml")
    t, st = paper["training"], paper["stimuli"]
    rows = design_size(st["sets"][t["train_set"]], st)
    return int(t["epochs"]) * rows / images_per_s / 3600.0, int(t["gpus"])


def save_untrained(path: Path, classes: int, width: int = 64) -> Path:
    """A model file as the training stage writes it (untrained weights: extraction costs the same)."""
    from infodissect.nets import build_model
    from infodissect.train.data import Labels
    from infodissect.train.loop import TrainSpec, _model_file

    torch.manual_seed(0)
    spec = TrainSpec(width=width)
    labels = Labels("identity", tuple(str(i) for i in range(classes)), np.zeros(0, np.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_model_file(spec, build_model(classes, width=width, stem=spec.stem), labels), path)
    return path


def extract_rate(model_path: Path, store: Path, out: Path, device: str, batch: int) -> float:
    """Images/s of the activation stage (every read-out layer, float16) on ``store``."""
    import shutil

    import zarr

    from infodissect.activations import extract

    n = zarr.open_group(str(store), mode="r")["image"].shape[0]

    def run() -> None:
        shutil.rmtree(out, ignore_errors=True)
        extract(model_path, store, out, dtype="float16", batch_size=batch, device=device, progress=False)

    seconds, _ = timed(run, torch.device(device), 1)
    return n / seconds


# --------------------------------------------------------------------------- MI


def mi_workloads(n: int, units: int, pixels: int, seed: int = 0) -> dict[str, np.ndarray]:
    """benchmarks/mi.py's data, sized: float32 units, uint8 pixels, 5 continuous and 3 discrete factors."""
    from mi import data

    u, p, f = data(n, seed)
    return {"units": u[:, :units], "pixels": p[:, :pixels],
            "continuous": np.stack([f[f"c{i}"].values for i in range(5)], 1),
            "discrete": np.stack([f[f"d{k}"].values for k in (100, 2, 7)], 1)}


def mi_factors(x, continuous, discrete) -> Any:
    """Workload 1: every unit against every factor, (P, 8) bits, with the kernels of x's library and device."""
    from infodissect.info import copnorm, mi_gg, mi_model_gd
    from infodissect.info.backend import namespace

    xp = namespace(x)
    xc = copnorm(x)
    yc = copnorm(continuous)
    cols = [mi_gg(xc[:, :, None], xp.broadcast_to(yc[:, None, i:i + 1], (xc.shape[0], xc.shape[1], 1)))
            for i in range(yc.shape[1])]
    cols += [mi_model_gd(xc, discrete[:, j]) for j in range(discrete.shape[1])]
    return xp.stack(cols, axis=-1)


def mi_pairs(x, y) -> Any:
    """Workload 3: every pixel against every unit, (P, Q) bits."""
    from infodissect.info import copnorm, mi_gg_pairs

    return mi_gg_pairs(copnorm(x), copnorm(y))


def mi_compare(device: torch.device, n: int, units: int, pixels: int, repeats: int) -> list[dict[str, float]]:
    """Seconds on the CPU (NumPy) and on ``device`` (PyTorch, float32) and the largest difference, per workload."""
    from infodissect.info.backend import to_numpy

    w = mi_workloads(n, units, pixels)
    t = {k: torch.as_tensor(w[k], device=device, dtype=torch.float32) for k in ("units", "continuous", "pixels")}
    rows = []
    for name, cpu_fn, dev_fn in (
            ("1. units x 8 factors", lambda: mi_factors(w["units"], w["continuous"], w["discrete"]),
             lambda: mi_factors(t["units"], t["continuous"], w["discrete"])),
            ("3. pixels x units pairs", lambda: mi_pairs(w["pixels"], w["units"]),
             lambda: mi_pairs(t["pixels"], t["units"]))):
        cpu_s, cpu_out = timed(cpu_fn, torch.device("cpu"), repeats)
        dev_s, dev_out = timed(dev_fn, device, repeats)
        diff = float(np.nanmax(np.abs(to_numpy(dev_out).astype(np.float64) - np.asarray(cpu_out, dtype=np.float64))))
        rows.append({"workload": name, "cpu_s": cpu_s, "device_s": dev_s, "max_diff": diff})
    return rows


# --------------------------------------------------------------------------- DDP


def ddp_first_epoch(tmp: Path, store: Path, test: Path, nproc: int, cuda: bool, epochs: int = 1) -> dict[str, float]:
    """Train through the training stage's launcher (torchrun) for one epoch; its metrics.csv's first row."""
    spec = {"task": "identity", "epochs": epochs, "batch_size": 64, "lr": 0.05, "width": 16, "seed": 0, "window": 2}
    out = tmp / f"ddp_{'cuda' if cuda else 'gloo'}{nproc}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "infodissect.cli", "train", "launch", "--nodes", "1", "--nproc-per-node", str(nproc),
           "--port", str(29600 + nproc + 10 * cuda), "--", "--spec", json.dumps(spec), "--train", str(store),
           "--test", str(test), "--out", str(out / "model"), "--checkpoints", str(out / "ckpt"), "--threads", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"training ({'1 GPU' if cuda else f'{nproc} Gloo processes'}) failed:\n{done.stderr[-3000:]}")
    with (out / "model" / "metrics.csv").open() as fh:
        first = next(csv.DictReader(fh))
    return {k: float(v) for k, v in first.items() if k != "epoch"}


# --------------------------------------------------------------------------- the table


def checks(rows: list[Row]) -> int:
    """Exit status of a table: BROKE (2) if a measurement broke or was skipped, else 1 if any check failed,
    else 0."""
    if any(r.broke for r in rows):
        return BROKE
    return 1 if any(r.ok is False for r in rows) else 0


def sections(device: torch.device, quick: bool, tmp: Path) -> list[tuple[str, Callable[[Callable[[Row], None]], None]]]:
    """The table's sections in order (most wanted first), each a function that adds its rows."""
    from infodissect.faces.model import build_face_model

    config = demo_config()
    repeats = 2 if quick else 10
    stores: dict[int, tuple[Path, Path]] = {}

    def render_rates(add: Callable[[Row], None]) -> None:
        from infodissect.faces import render as rendering

        model = build_face_model(device=device)
        for res, target, batch in ((64, 50_000, 2048), (224, 10_000, 512)):
            try:
                r = render_rate(model, res, 64 if quick else batch, repeats)
            except Exception:
                if rendering.GPU_BACKEND == "torch":
                    raise
                # The fused kernels broke: say so, and measure the rest with the PyTorch path.
                import traceback

                traceback.print_exc(limit=-8)
                add(Row(f"render {res} px ({rendering.GPU_BACKEND})", "BROKE", "the rest runs on the PyTorch path",
                        None, broke=True))
                rendering.GPU_BACKEND = "torch"
                r = render_rate(model, res, 64 if quick else batch, repeats)
            add(Row(f"render {res} px ({rendering.GPU_BACKEND if device.type == 'cuda' else 'numba'})",
                    f"{r:,.0f} images/s", f">= {target:,}", r >= target))
        if device.type == "cuda" and rendering.GPU_BACKEND != "torch":
            for res, batch in ((64, 2048), (224, 512)):
                r = render_rate(model, res, 64 if quick else batch, repeats, backend="torch")
                add(Row(f"render {res} px (PyTorch path, for comparison)", f"{r:,.0f} images/s"))

    def render_checks(add: Callable[[Row], None]) -> None:
        from infodissect.faces import render as rendering

        model = build_face_model(device=device)
        cpu_model = build_face_model(device=torch.device("cpu"))
        def agreement(name: str, a: dict[str, float], largest: bool = False) -> Row:
            return Row(name, f"{a['pixels_off']:.2%} px, {a['labels_off']:.2%} labels"
                       + (f" (max {a['max_diff']:.0f})" if largest else ""),
                       f"<= {RENDER_MAX_PIXELS_OFF:.1%} off by > 2 levels",
                       a["pixels_off"] <= RENDER_MAX_PIXELS_OFF and a["labels_off"] <= RENDER_MAX_LABELS_OFF)

        for res in (64, 224):
            add(agreement(f"render check {res} px vs CPU", render_agreement(cpu_model, model, res, 8 if quick else 64)))
        if device.type == "cuda" and rendering.GPU_BACKEND != "torch":
            for res in (64, 224):  # the same vertex stage, rasterized and resolved by the two GPU paths
                a = render_agreement(model, model, res, 8 if quick else 64, backend="torch", reference="triton")
                add(agreement(f"render check {res} px, Triton vs PyTorch path", a, largest=True))

    def sets(res: int) -> tuple[Path, Path]:
        if res not in stores:  # a set of at least one batch of each size below
            stores[res] = make_set(tmp, config, res, 16 if quick else 64, 16 if quick else 32, device.type)
        return stores[res]

    def training(add: Callable[[Row], None]) -> None:
        for res in (64, 224):
            design, store = sets(res)
            r = train_rates(config, design, store, res, device, 4 if quick else 40, 32 if quick else 256)
            add(Row(f"training {res} px, from memory", f"{r['memory']:,.0f} images/s"))
            add(Row(f"training {res} px, rendered on the fly",
                    f"{r['fly']:,.0f} images/s ({r['fly'] / r['memory']:.0%})",
                    ">= 80% of from memory" if res == 224 else "",
                    r["fly"] >= 0.8 * r["memory"] if res == 224 else None))
            if res == 224:
                hours, gpus = paper_gpu_hours(r["fly"])
                add(Row("config/paper.yaml training, projected", f"{hours:,.0f} GPU-hours ({hours / gpus:,.1f} h on "
                        f"{gpus} GPUs if DDP scales linearly)"))

    def extraction(add: Callable[[Row], None]) -> None:
        for res in (64, 224):
            _, store = sets(res)
            model_path = save_untrained(tmp / "models" / f"m{res}.pt", 16 if quick else 64)
            r = extract_rate(model_path, store, tmp / f"act{res}.zarr", str(device), 64 if quick else 256)
            add(Row(f"extraction {res} px (every layer, float16)", f"{r:,.0f} images/s"))

    def mi(add: Callable[[Row], None]) -> None:
        for m in mi_compare(device, 512 if quick else 10_000, 64 if quick else 2000, 64 if quick else 4096,
                            1 if quick else 3):
            add(Row(f"MI {m['workload']}", f"CPU {m['cpu_s']:.2f} s, GPU {m['device_s']:.3f} s",
                    f"{m['cpu_s'] / m['device_s']:.0f}x; |diff| {m['max_diff']:.1e} bits",
                    m["max_diff"] <= MI_MAX_DIFF_BITS))

    def ddp(add: Callable[[Row], None]) -> None:
        _, store = sets(64)
        gpu = ddp_first_epoch(tmp, store, store, 1, cuda=True)
        gloo = ddp_first_epoch(tmp, store, store, 2, cuda=False)
        rel = abs(gpu["train_loss"] - gloo["train_loss"]) / gloo["train_loss"]
        add(Row("DDP check: 1 GPU vs 2 Gloo, epoch-1 loss", f"{gpu['train_loss']:.4f} vs {gloo['train_loss']:.4f}",
                f"within {DDP_LOSS_RTOL:.0%} (bf16)", rel <= DDP_LOSS_RTOL))

    return [("render", render_rates), ("render check", render_checks), ("training", training),
            ("extraction", extraction), ("MI", mi), ("DDP check", ddp)]


def run(device: torch.device, quick: bool, tmp: Path, budget_s: float = float("inf")) -> list[Row]:
    """Every measurement and check on ``device``, rows printed as they come. A section that raises gets a
    BROKE row (its traceback printed) and the others still run; a section not started within ``budget_s``
    seconds gets a SKIPPED row."""
    import traceback

    rows: list[Row] = []
    start = time.perf_counter()

    def add(row: Row) -> None:
        rows.append(row)
        print(row.line(), flush=True)

    for name, section in sections(device, quick, tmp):
        if time.perf_counter() - start > budget_s:
            add(Row(name, "SKIPPED", f"past the {budget_s:.0f} s budget", None, broke=True))
            continue
        try:
            section(add)
        except Exception as e:  # a measurement that broke is not a failed check: say so, and go on
            traceback.print_exc(limit=-8)
            add(Row(name, "BROKE", f"{type(e).__name__}: {e}"[:200], None, broke=True))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small workloads (a smoke run)")
    ap.add_argument("--cpu", action="store_true",
                    help="a dry run of every section on the CPU, where there is no GPU (use with --quick)")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds after which sections not yet started are skipped (default 420)")
    a = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message="Consolidated metadata")  # zarr's, on every store it writes
    device = torch.device("cpu") if a.cpu else cuda_device()
    if device is None:
        print("no CUDA device: benchmarks/gpu.sh measures the GPU paths and has nothing to run here "
              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})", flush=True)
        return NO_CUDA
    import numba
    import xarray
    import zarr

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPUs; NumPy "
          f"{np.__version__}, Numba {numba.__version__}, xarray {xarray.__version__}, Zarr {zarr.__version__}",
          flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="infodissect-gpu-") as tmp:
        rows = run(device, a.quick, Path(tmp), a.budget)
    status = checks(rows)
    verdict = {0: "every check passed", 1: "a check FAILED", BROKE: "a measurement BROKE (traceback above)"}[status]
    print(f"\n{name}: {len(rows)} rows in {time.perf_counter() - start:.0f} s; {verdict}", flush=True)
    for row in rows:
        print(row.line(), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
