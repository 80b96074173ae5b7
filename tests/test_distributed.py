"""The MI stage on a real multi-worker Dask cluster (issue 18): a ``dask scheduler`` and two ``dask worker``
processes started here, as a SLURM job script starts them (docs/cluster.md), and the stage's commands pointed at
the scheduler's address. Results equal the in-process run's; each worker's memory stays bounded by the chunks it
holds, not by the store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from infodissect.cli import main
from infodissect.store import atomic_store, open_tree

distributed = pytest.importorskip("distributed")

WORKERS = 2


def _dask(*args: str, log: Path) -> subprocess.Popen:
    """A ``dask`` command-line process (the one the venv installs), its output in ``log``."""
    exe = Path(sys.executable).with_name("dask")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "dask", *args]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The address of a scheduler with two single-threaded worker processes, each limited to 1 GiB."""
    tmp = tmp_path_factory.mktemp("cluster")
    file = tmp / "scheduler.json"
    procs = [_dask("scheduler", "--scheduler-file", str(file), "--port", "0", "--no-dashboard", log=tmp / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert file.exists(), (tmp / "scheduler.log").read_text()
        for i in range(WORKERS):
            procs.append(_dask("worker", "--scheduler-file", str(file), "--nthreads", "1", "--memory-limit", "1GiB",
                               "--no-dashboard", "--name", f"w{i}", log=tmp / f"worker{i}.log"))
        address = json.loads(file.read_text())["address"]
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(WORKERS, timeout=60)
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _worker_stats(address: str) -> dict[str, dict[str, float]]:
    """Per worker: its process's peak resident memory (MB) and the tasks it has run."""

    def stats(dask_worker) -> dict[str, float]:
        import resource

        return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "tasks": float(dask_worker.state.transition_counter)}

    with distributed.Client(address) as client:
        return client.run(stats)


def _preload(address: str) -> None:
    """Import and compile the MI code on every worker first (its libraries and compiled kernels take over 100 MB
    once), so that what a worker's peak grows by in the stage is the stage's data."""

    def load() -> None:
        import dask

        import infodissect.analyses.information as info

        rng = np.random.default_rng(0)
        x = xr.DataArray(rng.normal(size=(64, 3)), dims=("sample", "unit"))
        f = xr.Dataset({"yaw": ("sample", rng.uniform(size=64)), "expression": ("sample", rng.integers(0, 2, 64))})
        f["yaw"].attrs["kind"], f["expression"].attrs["kind"] = "continuous", "categorical"
        with dask.config.set(scheduler="synchronous"):
            info.layer_information(x, f, n_perm=5, given={"yaw": "expression"}).load()

    with distributed.Client(address) as client:
        client.run(load)


def _stimuli(path: Path, n: int, side: int) -> Path:
    """A grey stimulus store whose pixels carry yaw and (given expression) intensity."""
    rng = np.random.default_rng(0)
    yaw = rng.uniform(-1, 1, n)
    expression = np.array(["neutral", "fear"], dtype=object)[rng.integers(0, 2, n)]
    intensity = rng.uniform(0.3, 1.0, n)
    base = rng.normal(120, 25, (n, side, side, 1)) + 40 * yaw[:, None, None, None]
    base[:, : side // 4] += 150 * (intensity * (expression == "fear"))[:, None, None, None]
    img = np.clip(base, 0, 255).astype(np.uint8)
    ds = xr.Dataset({"image": (("sample", "y", "x", "channel"), img)},
                    coords={"sample": np.arange(n), "yaw": ("sample", yaw), "expression": ("sample", expression),
                            "expression_intensity": ("sample", intensity), "channel": ["gray"]},
                    attrs={"generator_version": __import__("infodissect").faces.GENERATOR_VERSION, "set": "analysis"})
    with atomic_store(path) as tmp:
        ds.chunk({"sample": 128}).to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)
    return path


def _mi_pixels(stimuli: Path, out: Path, scheduler: str, chunk_mb: float, n_perm: int) -> xr.Dataset:
    spec = {"n_perm": n_perm, "seed": 1, "scheduler": scheduler, "chunk_mb": chunk_mb,
            "given": {"expression_intensity": "expression"}}
    assert main(["mi", "pixels", "--stimuli", str(stimuli), "--spec", json.dumps(spec), "--out", str(out)]) == 0
    return open_tree(out, "MI store")["pixels"].to_dataset().load()


def test_the_mi_stage_on_two_worker_processes_equals_the_local_run(cluster, tmp_path):
    stim = _stimuli(tmp_path / "analysis.zarr", 1024, 32)
    before = _worker_stats(cluster)
    remote = _mi_pixels(stim, tmp_path / "remote.zarr", cluster, 0.5, n_perm=20)
    after = _worker_stats(cluster)
    local = _mi_pixels(stim, tmp_path / "local.zarr", "synchronous", 0.5, n_perm=20)
    # Both workers computed, and the result is the local one: the MI to the last digit; the permutation null's
    # maxima (float32 sums, stats.py) and the thresholds taken from them within float32 rounding.
    assert all(after[w]["tasks"] > before[w]["tasks"] for w in after), (before, after)
    assert float(remote["mi"].sel(factor="yaw").max()) > 0.3 and bool(remote["significant"].any())
    assert float(remote["mi"].sel(factor="expression_intensity").max()) > 0.05
    assert remote["given"].sel(factor="expression_intensity").item() == "expression"
    xr.testing.assert_allclose(remote["mi"], local["mi"], rtol=0, atol=1e-12)
    xr.testing.assert_allclose(remote["null_max"], local["null_max"], rtol=1e-4, atol=0)
    xr.testing.assert_allclose(remote["threshold"], local["threshold"], rtol=1e-4, atol=0)
    assert (remote["significant"] == local["significant"]).mean() > 0.999
    assert remote.attrs["n_perm"] == local.attrs["n_perm"] == 20


@pytest.mark.slow  # 80-130 s on 2 cores (run with bash scripts/test.sh -m slow)
def test_a_worker_holds_a_few_chunks_not_its_share_of_the_store(cluster, tmp_path):
    """Each task reads its own block of pixels from the store (all samples of a few rows). Rechunking the store's
    sample chunks instead grew each worker by about its whole share of the data (115-122 MB of a 144 MB store,
    4 MB blocks); reading blocks, by 56 MB there, about 40 MB of it fixed (decode buffers, communication)."""
    n, side, chunk_mb = 2048, 128, 2.0
    stim = _stimuli(tmp_path / "analysis.zarr", n, side)
    store_mb = n * side * side * 8 / 2**20  # the image as the float64 the estimator reads: 256 MB
    _preload(cluster)
    before = _worker_stats(cluster)
    res = _mi_pixels(stim, tmp_path / "remote.zarr", cluster, chunk_mb, n_perm=2)
    after = _worker_stats(cluster)
    assert float(res["mi"].sel(factor="yaw").max()) > 0.3
    grown = {w: after[w]["peak_mb"] - before[w]["peak_mb"] for w in after}
    assert all(after[w]["tasks"] > before[w]["tasks"] for w in after), (before, after)
    assert max(grown.values()) < store_mb / 3, f"workers grew {grown} MB for {chunk_mb} MB chunks of a {store_mb:.0f} MB store"


def test_the_layers_mi_stage_on_two_worker_processes_equals_the_local_run(cluster, tmp_path):
    from test_activations import _model
    from test_activations import _stimuli as rgb_stimuli

    from infodissect.activations import extract

    stim, model = rgb_stimuli(tmp_path / "s.zarr", 256), _model(tmp_path / "m" / "model.pt")
    act = extract(model, stim, tmp_path / "act.zarr", layers=["block1_out", "block4_out"], batch_size=64,
                  progress=False)
    out = {}
    before = _worker_stats(cluster)
    for name, scheduler in (("remote", cluster), ("local", "synchronous")):
        spec = {"n_perm": 10, "seed": 2, "scheduler": scheduler, "chunk_mb": 1.0, "factors": ["yaw", "expression"]}
        path = tmp_path / f"{name}.zarr"
        assert main(["mi", "layers", "--activations", str(act), "--spec", json.dumps(spec), "--out", str(path)]) == 0
        out[name] = open_tree(path, "MI store")
        if name == "remote":
            after = _worker_stats(cluster)
            assert all(after[w]["tasks"] > before[w]["tasks"] for w in after), (before, after)
    for layer in ("block1_out", "block4_out"):
        r, lo = out["remote"][layer].to_dataset().load(), out["local"][layer].to_dataset().load()
        xr.testing.assert_allclose(r["mi"], lo["mi"], rtol=0, atol=1e-12)
        xr.testing.assert_allclose(r["threshold"], lo["threshold"], rtol=1e-4, atol=0)
    shutil.rmtree(act)
