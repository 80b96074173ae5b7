"""Activation stage: labelled, chunked stores that equal a direct forward pass, in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from infodissect.store import StoreError, atomic_store
from infodissect.activations import ExtractionError, describe, extract
from infodissect.nets import READOUT_LAYERS, build_model, readout_modules


def _stimuli(path: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """A stimulus-format store (images plus factor coordinates)."""
    rng = np.random.default_rng(seed)
    ds = xr.Dataset({"image": (("sample", "y", "x", "channel"), rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))},
                    coords={"sample": np.arange(n), "identity": ("sample", rng.integers(0, 4, n)),
                            "yaw": ("sample", rng.uniform(-45, 45, n)),
                            "expression": ("sample", np.array(["neutral", "fear"], dtype=object)[np.arange(n) % 2])})
    ds.attrs.update(set="analysis", generator_version=__import__("infodissect").faces.GENERATOR_VERSION,
                    factors=json.dumps({"identity": {"kind": "categorical"}}), identities=4)
    with atomic_store(path) as tmp:
        ds.chunk({"sample": 64}).to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)
    return path


def _model(path: Path, width: int = 8) -> Path:
    torch.manual_seed(0)
    model = build_model(4, width=width)
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "classes": list("0123"), "task": "identity",
                "spec": {"width": width, "stem": "large"}, "architecture": "ResNet10"}, path)
    return path


def test_store_equals_a_direct_forward_pass_and_is_labelled(tmp_path):
    stim, model_path = _stimuli(tmp_path / "s.zarr", 100), _model(tmp_path / "m" / "model.pt")
    out = extract(model_path, stim, tmp_path / "a.zarr", dtype="float32", batch_size=32, progress=False)
    tree = xr.open_datatree(out, engine="zarr")
    assert set(tree.children) == set(READOUT_LAYERS)
    act = tree["block2_out"].activation
    assert act.dims == ("sample", "unit", "y", "x") and act.shape[0] == 100
    assert tree["pool"].activation.dims == ("sample", "unit") and tree["logits"].activation.shape == (100, 4)
    assert set(act.coords) >= {"sample", "identity", "yaw", "expression"}
    assert act.attrs["layer"] == "block2_out" and tree.attrs["model"] == "m" and tree.attrs["dtype"] == "float32"
    # A direct forward pass over the same batches gives exactly the stored values.
    seen = _forward(model_path, stim, 32)
    for name in READOUT_LAYERS:
        np.testing.assert_array_equal(tree[name].activation.values, seen[name])
    assert not (tmp_path / "a.zarr.partial").exists()


def _forward(model_path: Path, stim: Path, batch: int) -> dict[str, np.ndarray]:
    """Every read-out layer of a direct forward pass over the set, in batches."""
    model = build_model(4, width=8)
    model.load_state_dict(torch.load(model_path, weights_only=False)["state_dict"])
    model.eval()
    seen: dict[str, list] = {}
    for name, mod in readout_modules(model).items():
        mod.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, []).append(o.detach()))
    images = xr.open_zarr(stim).image.values
    with torch.inference_mode():
        for lo in range(0, len(images), batch):
            model(torch.from_numpy(images[lo:lo + batch]).permute(0, 3, 1, 2).float() / 255.0)
    return {k: torch.cat(v).numpy() for k, v in seen.items()}


def test_shard_files_written_directly_read_back_through_zarr(tmp_path, monkeypatch):
    """Units split into chunks with a remainder, several shards per layer, a short last batch:
    the directly written shard files read back (through zarr's own sharding codec) as the forward pass."""
    import importlib

    import zarr

    from infodissect.activations.shards import ShardWriter

    # (the package's `extract` function shadows its module's name)
    monkeypatch.setattr(importlib.import_module("infodissect.activations.extract"), "SHARD_BYTES", 40_000)
    stim, model_path = _stimuli(tmp_path / "s.zarr", 90), _model(tmp_path / "m" / "model.pt")
    out = extract(model_path, stim, tmp_path / "a.zarr", dtype="float32", batch_size=16, chunk_mb=0.012,
                  progress=False)
    root = zarr.open_group(str(out), mode="r")
    arr = root["block1_out"]["activation"]
    writer = ShardWriter(arr)
    assert writer.root is not None, "the direct path must apply to the extractor's own layout"
    assert arr.shape[1] % writer.inner[1] and writer.per_shard[1] > 1  # units split, with a remainder
    assert -(-90 // writer.shard[0]) > 1  # several shards along samples
    files = [f for f in (out / "block1_out" / "activation").iterdir() if f.name != "zarr.json"]
    assert len(files) == -(-90 // writer.shard[0])  # one file per shard, not one per chunk
    seen = _forward(model_path, stim, 16)
    tree = xr.open_datatree(out, engine="zarr")
    for name in READOUT_LAYERS:
        np.testing.assert_array_equal(tree[name].activation.values, seen[name])


def test_sample_ranges_read_from_the_shard_files_equal_zarr_reads(tmp_path, monkeypatch):
    """read_samples (straight from the shard files) against zarr's own reads: the extractor's layout (units
    split with a remainder, several shards, a short last batch), zarr-written sharded arrays of 1 to 3
    dims with inner chunks never written (fill values), and layouts it must leave to zarr; a damaged shard
    index and a shard file deleted after opening are StoreErrors."""
    import importlib

    import zarr

    from infodissect.activations.shards import read_samples, shard_layout
    from infodissect.store import open_group, write_manifest

    monkeypatch.setattr(importlib.import_module("infodissect.activations.extract"), "SHARD_BYTES", 40_000)
    stim, model_path = _stimuli(tmp_path / "s.zarr", 90), _model(tmp_path / "m" / "model.pt")
    out = extract(model_path, stim, tmp_path / "a.zarr", dtype="float16", batch_size=16, chunk_mb=0.006,
                  progress=False)
    group = open_group(out, "activation store")
    ranges = [(0, 90), (0, 1), (15, 17), (30, 75), (89, 90), (40, 40), (-5, 200)]
    for name in READOUT_LAYERS:
        arr = group[name]["activation"]
        assert shard_layout(arr) is not None, name
        for a, b in ranges:
            got = read_samples(arr, a, b)
            assert got.dtype == arr.dtype and np.array_equal(got, arr[max(a, 0):min(b, 90)]), (name, a, b)

    rng = np.random.default_rng(0)
    root = zarr.open_group(str(tmp_path / "z.zarr"), mode="w")
    cases = {"vec": ((50,), (20,), (10,), "float32"), "mat": ((50, 7), (20, 7), (10, 7), "int16"),
             "maps": ((50, 3, 4, 4), (20, 3, 4, 4), (5, 3, 4, 4), "float16"),
             "split": ((50, 7, 4), (20, 9, 4), (10, 3, 4), "float32"),  # units in 3 inner chunks, the last short
             "compressed": ((50, 3), (20, 3), (10, 3), "float32")}
    for name, (shape, shards, chunks, dtype) in cases.items():
        arr = root.create_array(name, shape=shape, shards=shards, chunks=chunks, dtype=dtype, fill_value=7,
                                compressors="auto" if name == "compressed" else None)
        values = rng.normal(size=shape).astype(dtype) if dtype != "int16" else rng.integers(-9, 9, shape, dtype)
        arr[:23] = values[:23]  # samples 30..50 never written: whole inner chunks and a whole shard of fill
        arr[41:43] = values[41:43]
    write_manifest(tmp_path / "z.zarr")
    z = open_group(tmp_path / "z.zarr")
    for name in cases:
        arr = z[name]
        assert (shard_layout(arr) is None) == (name == "compressed"), name
        for a, b in [(0, 50), (3, 27), (20, 41), (25, 45), (42, 50)]:
            assert np.array_equal(read_samples(arr, a, b), arr[a:b]), (name, a, b)

    shard = out / "block1_out" / "activation" / "c.0.0.0.0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="c.0.0.0.0: the shard index is damaged"):
        read_samples(group["block1_out"]["activation"], 0, 16)
    (out / "relu_stem" / "activation" / "c.0.0.0.0").unlink()
    with pytest.raises(StoreError, match="a.zarr: array relu_stem/activation, chunk c.0.0.0.0 is missing"):
        read_samples(group["relu_stem"]["activation"], 0, 16)


def test_worker_processes_write_their_own_sample_ranges_of_one_store(tmp_path):
    from infodissect.activations.extract import sample_ranges

    assert sample_ranges(100, 32, 2) == [(0, 64), (64, 100)]
    assert sample_ranges(100, 32, 8) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    stim, model_path = _stimuli(tmp_path / "s.zarr", 100), _model(tmp_path / "m" / "model.pt")
    one = extract(model_path, stim, tmp_path / "one.zarr", dtype="float32", batch_size=32, progress=False)
    two = extract(model_path, stim, tmp_path / "two.zarr", dtype="float32", batch_size=32, progress=False,
                  processes=2, threads=1)
    a, b = xr.open_datatree(one, engine="zarr"), xr.open_datatree(two, engine="zarr")
    for name in READOUT_LAYERS:
        np.testing.assert_array_equal(a[name].activation.values, b[name].activation.values)
    assert not (tmp_path / "two.zarr.partial").exists()


def test_pooling_float16_chunking_and_info(tmp_path):
    stim, model_path = _stimuli(tmp_path / "s.zarr", 70), _model(tmp_path / "m" / "model.pt")
    out = extract(model_path, stim, tmp_path / "a.zarr", layers=["relu_stem", "block1_out", "pool"],
                  pooling={"default": "full", "relu_stem": 4, "block1_out": "mean"}, dtype="float16",
                  batch_size=16, chunk_mb=0.001, progress=False)
    tree = xr.open_datatree(out, engine="zarr")
    assert set(tree.children) == {"relu_stem", "block1_out", "pool"}
    stem = tree["relu_stem"].activation
    assert stem.shape == (70, 8, 4, 4) and stem.dtype == np.float16 and stem.attrs["pooling"] == "grid 4"
    assert tree["block1_out"].activation.dims == ("sample", "unit")
    chunks = xr.open_zarr(out, group="relu_stem").activation.encoding["chunks"]
    assert chunks[0] == 16 and chunks[1] < 8  # split along units to meet the byte target
    text = describe(out)
    assert "relu_stem" in text and "(70, 8, 4, 4)" in text and "total" in text
    (tmp_path / "b.zarr.partial").mkdir()
    with pytest.raises(StoreError, match="unfinished"):
        describe(tmp_path / "b.zarr")


def test_mismatches_fail_with_clear_errors(tmp_path):
    stim = _stimuli(tmp_path / "s.zarr", 20)
    model_path = _model(tmp_path / "m" / "model.pt")
    with pytest.raises(ExtractionError, match="unknown layer"):
        extract(model_path, stim, tmp_path / "a.zarr", layers=["conv9"], progress=False)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ExtractionError, match="not a trained infodissect model"):
        extract(tmp_path / "bad.pt", stim, tmp_path / "a.zarr", progress=False)
    gray = xr.open_zarr(stim).isel(channel=[0]).load()
    with atomic_store(tmp_path / "g.zarr") as tmp:
        gray.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)
    with pytest.raises(ExtractionError, match="1 channel"):
        extract(model_path, tmp_path / "g.zarr", tmp_path / "a.zarr", progress=False)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "a.zarr.partial").exists()


@pytest.mark.slow
def test_extraction_memory_is_bounded_by_the_batch_not_the_set(tmp_path):
    """A set whose activations are several times the bound extracts within it."""
    n = 6144
    stim, model_path = _stimuli(tmp_path / "s.zarr", n, size=64), _model(tmp_path / "m" / "model.pt", width=16)
    script = textwrap.dedent(f"""
        import json, torch
        from infodissect.activations import extract
        torch.set_num_threads(2)
        def hwm():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
        import xarray, zarr, dask.array  # libraries in memory before the baseline
        base = hwm()
        extract({str(model_path)!r}, {str(stim)!r}, {str(tmp_path / 'a.zarr')!r}, dtype="float32",
                batch_size=64, progress=False)
        print(json.dumps({{"base": base, "peak": hwm()}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    mem = json.loads(res.stdout.strip().splitlines()[-1])
    stored_mb = sum(xr.open_zarr(tmp_path / "a.zarr", group=g).activation.nbytes for g in READOUT_LAYERS) / 2**20
    used = mem["peak"] - mem["base"]
    assert stored_mb > 600, stored_mb
    assert used < stored_mb / 4, f"extraction used {used:.0f} MB for {stored_mb:.0f} MB of activations"
