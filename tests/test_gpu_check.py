"""benchmarks/gpu.sh and benchmarks/gpu.py on a machine without a GPU (issue 18): the clear "no CUDA device"
exit before anything is installed, and every measurement and check of the table run on the CPU, small."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine, run bash benchmarks/gpu.sh")


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (its dataclass looks itself up there)
    spec.loader.exec_module(module)
    return module


def test_gpu_sh_says_no_cuda_device_and_installs_nothing(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith("no CUDA device") and len(done.stdout.strip().splitlines()) == 1
    assert "setting up" not in done.stdout  # said before any set-up


def test_gpu_py_exits_with_no_cuda(gpu, capsys):
    assert gpu.main([]) == gpu.NO_CUDA
    assert capsys.readouterr().out.startswith("no CUDA device")


def test_the_table_fails_when_one_check_fails(gpu):
    rows = [gpu.Row("a figure", "1 images/s"), gpu.Row("a check", "ok", "target", True)]
    assert gpu.checks(rows) == 0
    assert gpu.checks(rows + [gpu.Row("another", "bad", "target", False)]) == 1
    assert "FAILED" in gpu.Row("another", "bad", "target", False).line()


def test_the_paper_training_is_projected_from_the_measured_rate(gpu):
    hours, gpus = gpu.paper_gpu_hours(10_000.0)
    assert gpus == 4 and hours == pytest.approx(30 * 26_000_000 / 10_000 / 3600)  # 30 epochs of 26M images


def test_every_measurement_runs_on_the_cpu(gpu, tmp_path):
    from infodissect.faces.model import build_face_model

    cpu = torch.device("cpu")
    model = build_face_model(device=cpu)
    # The path CUDA takes (the PyTorch rasterizer) against the CPU's compiled one: bit-identical on the CPU.
    agree = gpu.render_agreement(model, model, 32, 4, backend="torch")
    assert agree == {"pixels_off": 0.0, "max_diff": 0.0, "labels_off": 0.0}
    assert gpu.render_rate(model, 32, 8, 1) > 0
    config = gpu.demo_config()
    design, store = gpu.make_set(tmp_path, config, 32, 4, 40, "cpu")  # 160 images: two chunks of the store
    rates = gpu.train_rates(config, design, store, 32, cpu, 2, 8)
    assert rates["memory"] > 0 and rates["fly"] > 0
    model_path = gpu.save_untrained(tmp_path / "m.pt", 4, width=8)
    assert gpu.extract_rate(model_path, store, tmp_path / "act.zarr", "cpu", 8) > 0
    for row in gpu.mi_compare(cpu, 256, 16, 16, 1):  # PyTorch float32 kernels against NumPy's
        assert 0 < row["max_diff"] <= gpu.MI_MAX_DIFF_BITS, row


@pytest.mark.slow  # two torchrun launches, ~30-50 s (bash scripts/test.sh -m slow)
def test_the_ddp_check_compares_like_with_like(gpu, tmp_path):
    """Without a GPU the "1 GPU" run is one CPU process: it must then equal the 2 Gloo processes (tested to
    learn the same weights), so the check's comparison is of the same training."""
    config = gpu.demo_config()
    _, store = gpu.make_set(tmp_path, config, 32, 4, 32, "cpu")
    one = gpu.ddp_first_epoch(tmp_path, store, store, 1, cuda=True)
    two = gpu.ddp_first_epoch(tmp_path, store, store, 2, cuda=False)
    assert np.isfinite(one["train_loss"]) and one["train_loss"] > 0
    assert abs(one["train_loss"] - two["train_loss"]) / two["train_loss"] < 1e-3
