"""The store layer: atomic writes, integrity manifests, damaged or missing chunks named, provenance digests.

The failures of issue 13 that returned silently wrong results are reproduced here as a
user's file system or a careless rerun would cause them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from infodissect.cli import main
from infodissect.store import (MANIFEST, StoreError, atomic_file, atomic_store, digest, open_dataset, open_group,
                               open_tree, verify, write_zarr)


def _dataset(n: int = 64, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset({"image": (("sample", "y", "x"), rng.integers(0, 255, (n, 8, 8), dtype=np.uint8))},
                      coords={"sample": np.arange(n), "yaw": ("sample", rng.uniform(-1, 1, n))})


def _store(path: Path, n: int = 64, seed: int = 0) -> Path:
    with atomic_store(path) as tmp:
        write_zarr(_dataset(n, seed).chunk({"sample": 16}), tmp)
    return path


def _chunk(path: Path, array: str = "image", index: int = 2) -> Path:
    chunk = path / array / "c" / str(index) / "0" / "0"
    assert chunk.is_file(), sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))
    return chunk


def test_a_finished_store_has_a_manifest_and_reads_back_what_was_written(tmp_path):
    path = _store(tmp_path / "s.zarr")
    manifest = json.loads((path / MANIFEST).read_text())
    assert "image/c/2/0/0" in manifest["files"] and "zarr.json" in manifest["files"]
    xr.testing.assert_identical(open_dataset(path).load(), _dataset().chunk({"sample": 16}).load())
    assert verify(path) == sum(size for size, _ in manifest["files"].values())
    assert open_group(path)["image"][:].sum() == _dataset()["image"].values.sum()


def test_a_missing_chunk_is_an_error_naming_store_array_and_chunk_never_fill_values(tmp_path):
    path = _store(tmp_path / "s.zarr")
    _chunk(path).unlink()
    with pytest.raises(StoreError, match=r"s\.zarr: array image, chunk c/2/0/0 is missing"):
        open_dataset(path)


def test_a_truncated_chunk_is_refused_when_the_store_is_opened(tmp_path):
    path = _store(tmp_path / "s.zarr")
    chunk = _chunk(path)
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(StoreError, match=r"array image, chunk c/2/0/0 is \d+ bytes, \d+ when written"):
        open_dataset(path)
    with pytest.raises(StoreError, match="chunk c/2/0/0"):
        verify(path)


def test_a_damaged_chunk_of_the_same_size_is_an_error_when_read(tmp_path):
    path = _store(tmp_path / "s.zarr")
    chunk = _chunk(path)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    ds = open_dataset(path)  # sizes agree: opening is cheap and does not read the data
    with pytest.raises(StoreError, match=r"array image, chunk c/2/0/0 is damaged"):
        ds["image"].values
    with pytest.raises(StoreError, match="chunk c/2/0/0 is damaged"):
        verify(path)


def test_a_store_without_a_manifest_or_unfinished_is_refused(tmp_path):
    _dataset().to_zarr(tmp_path / "raw.zarr", zarr_format=3, consolidated=True)
    with pytest.raises(StoreError, match="not a finished store"):
        open_dataset(tmp_path / "raw.zarr")
    (tmp_path / "half.zarr.partial").mkdir()
    with pytest.raises(StoreError, match="unfinished"):
        open_tree(tmp_path / "half.zarr", "MI store")
    with pytest.raises(StoreError, match="no such MI store"):
        open_tree(tmp_path / "none.zarr", "MI store")


def test_digests_follow_content_and_inputs_are_recorded(tmp_path):
    a, b, c = _store(tmp_path / "a.zarr"), _store(tmp_path / "b.zarr"), _store(tmp_path / "c.zarr", seed=1)
    assert digest(a) == digest(b) != digest(c)
    with atomic_store(tmp_path / "d.zarr", inputs=[a, c]) as tmp:
        write_zarr(_dataset(4), tmp)
    inputs = json.loads((tmp_path / "d.zarr" / MANIFEST).read_text())["inputs"]
    assert inputs == {str(a): digest(a), str(c): digest(c)}
    (tmp_path / "f.txt").write_text("x")
    assert digest(tmp_path / "f.txt") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


def test_a_failed_rewrite_keeps_the_previous_store(tmp_path):
    path = _store(tmp_path / "s.zarr")
    before = digest(path)
    with pytest.raises(RuntimeError), atomic_store(path) as tmp:
        write_zarr(_dataset(4, seed=3), tmp)
        raise RuntimeError("killed")
    assert digest(path) == before and not (tmp_path / "s.zarr.partial").exists()
    _store(path, seed=3)  # a successful rewrite replaces it
    assert digest(path) != before and not (tmp_path / "s.zarr.old").exists()


def test_failed_writes_leave_nothing_and_keep_the_previous_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and not (tmp_path / "out.json.partial").exists()
    with pytest.raises(StoreError, match="no such file"):  # a missing input fails before any work
        with atomic_store(tmp_path / "x.zarr", inputs=[tmp_path / "nope.pt"]):
            raise AssertionError("not reached")
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "x.zarr.partial").exists()


# --------------------------------------------------------------------------- the pipeline's readers


def _stimuli(path: Path, n: int = 96) -> Path:
    """A stimulus-format store (images and factor coordinates) as the render stage writes it."""
    from infodissect.faces.model import GENERATOR_VERSION

    rng = np.random.default_rng(0)
    yaw = rng.uniform(-1, 1, n)
    img = np.clip(rng.normal(100, 20, (n, 8, 8, 1)) + 60 * yaw[:, None, None, None], 0, 255).astype(np.uint8)
    ds = xr.Dataset({"image": (("sample", "y", "x", "channel"), img)},
                    coords={"sample": np.arange(n), "yaw": ("sample", yaw), "channel": ["gray"]},
                    attrs={"generator_version": GENERATOR_VERSION, "set": "analysis"})
    with atomic_store(path) as tmp:
        write_zarr(ds.chunk({"sample": 32}), tmp)
    return path


def test_mi_on_a_stimulus_store_with_a_deleted_chunk_fails_naming_it(tmp_path, caplog):
    """Issue 13, failure 2: the images read as zeros and the job exited 0."""
    stim = _stimuli(tmp_path / "analysis.zarr")
    spec = json.dumps({"n_perm": 5, "scheduler": "synchronous"})
    assert main(["mi", "pixels", "--stimuli", str(stim), "--spec", spec, "--out", str(tmp_path / "ok.zarr")]) == 0
    assert float(open_tree(tmp_path / "ok.zarr", "MI store")["pixels"]["mi"].max()) > 0.5
    (stim / "image" / "c" / "1" / "0" / "0" / "0").unlink()
    out = tmp_path / "mi.zarr"
    assert main(["mi", "pixels", "--stimuli", str(stim), "--spec", spec, "--out", str(out)]) == 2
    assert "analysis.zarr: array image, chunk c/1/0/0/0 is missing" in caplog.text
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_mi_on_a_truncated_chunk_fails_naming_store_and_chunk_not_a_codec(tmp_path, caplog):
    """Issue 13, failure 3: a 164-line Dask traceback ending in 'Zstd decompression error'."""
    stim = _stimuli(tmp_path / "analysis.zarr")
    chunk = stim / "image" / "c" / "2" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    spec = json.dumps({"n_perm": 5, "scheduler": "local"})
    assert main(["mi", "pixels", "--stimuli", str(stim), "--spec", spec, "--out", str(tmp_path / "mi.zarr")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "analysis.zarr: array image, chunk c/2/0/0/0 is 10 bytes" in errors[0]
    assert "Zstd" not in caplog.text


def test_an_activation_layer_with_a_deleted_shard_fails_instead_of_reading_nan(tmp_path):
    """Issue 13, failure 2 (activations): the layer read as NaN and the MI job succeeded."""
    from test_activations import _model
    from test_activations import _stimuli as rgb_stimuli

    from infodissect.activations import extract
    from infodissect.analyses.information import activation_information

    stim, model = rgb_stimuli(tmp_path / "s.zarr", 64), _model(tmp_path / "m" / "model.pt")
    act = extract(model, stim, tmp_path / "act.zarr", layers=["block1_out", "pool"], batch_size=32, progress=False)
    activation_information(act, tmp_path / "ok.zarr", n_perm=5)
    shard = sorted((act / "block1_out" / "activation").glob("c*"))[-1]
    shard.unlink()
    with pytest.raises(StoreError, match=rf"act\.zarr: array block1_out/activation, chunk {shard.name} is missing"):
        activation_information(act, tmp_path / "mi.zarr", n_perm=5)
    assert not (tmp_path / "mi.zarr").exists()


def test_a_pooling_key_naming_no_layer_is_a_config_error():
    """Issue 13, failure 4: `activations: {pooling: {block9_out: mean}}` passed validation and was ignored."""
    import yaml

    from infodissect.config import ConfigError, validate_config

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "test.yaml").read_text())
    cfg.setdefault("activations", {})["pooling"] = {"default": "full", "block1_out": "mean"}
    validate_config(cfg)
    cfg["activations"]["pooling"] = {"default": "full", "block9_out": "mean"}
    with pytest.raises(ConfigError, match=r"activations\.pooling.*block9_out.*read-out layers"):
        validate_config(cfg)


def test_a_checkpoint_resumes_only_the_run_of_its_training_data(tmp_path):
    """Issue 13, failure 1: after new stimuli (another seed), training 'resumed' and wrote the old model."""
    from test_train import _store as train_store
    from test_train import _train, _weights

    from infodissect.train.loop import TrainSpec

    spec = TrainSpec(epochs=2, batch_size=8, lr=0.05, width=8, window=2)
    test = train_store(tmp_path / "test.zarr", 16, seed=1)
    first = _train(tmp_path, "run", 1, spec, train_store(tmp_path / "a.zarr", 32, seed=0), test)
    assert first.name == "run", (first / "log").read_text()[-2000:]
    old = _weights(first)
    shutil.rmtree(tmp_path / "run" / "model")  # as Snakemake does before it reruns the job
    # New stimuli (as after `--config seed=1`): the finished checkpoint is not this run's. (That the same data
    # resume is tested by the killed-training tests of test_train.py.)
    other = _train(tmp_path, "run", 1, spec, train_store(tmp_path / "a.zarr", 32, seed=5), test)
    log = (other / "log").read_text()
    assert "resuming" not in log and "made for another spec, process count or training data" in log
    assert any(not torch.equal(_weights(other)[k], v) for k, v in old.items())
    assert os.path.exists(tmp_path / "run" / "ckpt" / "last.pt")


def test_mi_without_permutations_measures_and_marks_nothing_significant(tmp_path):
    """`mi.n_perm: 0` (allowed: "0 = none") ended in KeyError: 'mi'."""
    stim = _stimuli(tmp_path / "analysis.zarr")
    spec = json.dumps({"n_perm": 0, "scheduler": "synchronous"})
    assert main(["mi", "pixels", "--stimuli", str(stim), "--spec", spec, "--out", str(tmp_path / "mi.zarr")]) == 0
    res = open_tree(tmp_path / "mi.zarr", "MI store")["pixels"].to_dataset().load()
    assert float(res["mi"].sel(factor="yaw").max()) > 0.5 and not res["significant"].any()
    assert np.isnan(res["threshold"]).all() and res.sizes["permutation"] == 0 and res.attrs["n_perm"] == 0


def test_an_unreadable_checkpoint_starts_training_over(tmp_path):
    from infodissect.nets import build_model
    from infodissect.train.loop import Checkpoint, Dist

    model = build_model(3, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = Checkpoint(tmp_path / "last.pt", "spec", 1, {"train": "a", "test": "b"}, "identity")
    ctx = Dist(0, 1, torch.device("cpu"))
    assert ckpt.resume(model, opt, ctx) == ([], 0, 0, [0.0, 0.0, 0.0])  # none yet
    ckpt.save(model, opt, 2, 0, [0.0, 0.0, 0.0], [{"epoch": 1}, {"epoch": 2}])
    assert ckpt.resume(model, opt, ctx)[:2] == ([{"epoch": 1}, {"epoch": 2}], 2)
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])  # truncated by a full disk
    assert ckpt.resume(model, opt, ctx) == ([], 0, 0, [0.0, 0.0, 0.0])
