"""Training: the network, the store batches, DDP through torchrun, resuming, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from infodissect.store import atomic_store, write_manifest
from infodissect.faces.model import GENERATOR_VERSION
from infodissect.nets import READOUT_LAYERS, build_model, readout_modules
from infodissect.train.data import DataError, StoreBatches, task_labels
from infodissect.config import parse_model_name
from infodissect.train.loop import TrainSpec

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _store(path: Path, n: int, identities: int = 4, seed: int = 0, size: int = 16, chunk: int = 8) -> Path:
    """A small stimulus-format store whose images carry a per-identity pattern plus noise."""
    rng = np.random.default_rng(seed)
    ident = np.arange(n) % identities
    patterns = rng.uniform(0, 255, size=(identities, size, size, 3))
    img = np.clip(patterns[ident] * 0.6 + rng.uniform(0, 100, size=(n, size, size, 3)), 0, 255).astype(np.uint8)
    ds = xr.Dataset({"image": (("sample", "y", "x", "channel"), img)},
                    coords={"identity": ("sample", ident), "yaw": ("sample", rng.uniform(-45, 45, n)),
                            "expression": ("sample", np.array(["neutral", "happiness"], dtype=object)[ident % 2])})
    ds.attrs.update(identities=identities, generator_version=GENERATOR_VERSION, factors=json.dumps({
        "identity": {"kind": "categorical"}, "yaw": {"kind": "continuous"},
        "expression": {"kind": "categorical", "levels": ["neutral", "happiness"]}}))
    with atomic_store(path) as tmp:
        ds.chunk({"sample": chunk}).to_zarr(tmp, mode="w")
    return path


def test_resnet10_layers_and_shapes():
    model = build_model(10, width=16)
    seen = {}
    for name, mod in readout_modules(model).items():
        mod.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 10) and list(seen) == list(READOUT_LAYERS)
    assert sum(1 for m in model.modules() if isinstance(m, torch.nn.ReLU)) == 9
    assert seen["relu_stem"] == (2, 16, 32, 32) and seen["block4_out"] == (2, 128, 2, 2)
    assert seen["pool"] == (2, 128) and seen["logits"] == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 8 and convs[0].kernel_size == (7, 7)
    assert len([c for c in convs if c.kernel_size == (1, 1)]) == 3  # projection shortcuts of blocks 2-4
    small = build_model(10, width=16, stem="small")
    assert small(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_model_names():
    assert parse_model_name("identity_s0") == ("identity", 0) and parse_model_name("gender_s12") == ("gender", 12)
    with pytest.raises(ValueError, match="<task>_s<seed>"):
        parse_model_name("identity")


def test_store_batches_are_rank_slices_of_the_same_global_batches(tmp_path):
    path = _store(tmp_path / "s.zarr", 50)
    labels = task_labels(path, "identity")
    assert labels.classes == ("0", "1", "2", "3")
    one = list(StoreBatches(path, labels, 8, 0, 1, seed=3, window=2).epoch(1))
    ranks = [list(StoreBatches(path, labels, 8, r, 2, seed=3, window=2).epoch(1)) for r in range(2)]
    assert len(one) == 50 // 8 == len(ranks[0]) == len(ranks[1])
    for k, (x, y) in enumerate(one):
        assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and float(x.max()) <= 1.0
        torch.testing.assert_close(torch.cat([ranks[0][k][0], ranks[1][k][0]]), x)
        torch.testing.assert_close(torch.cat([ranks[0][k][1], ranks[1][k][1]]), y)
    # Another epoch, another order; every sample at most once per epoch.
    other = torch.cat([y for _, y in StoreBatches(path, labels, 8, 0, 1, seed=3).epoch(2)])
    assert not torch.equal(other, torch.cat([y for _, y in one]))
    with pytest.raises(DataError, match="not divisible"):
        StoreBatches(path, labels, 7, 0, 2)
    with pytest.raises(DataError, match="continuous"):
        task_labels(path, "yaw")
    with pytest.raises(DataError, match="no factor 'gender'"):
        task_labels(path, "gender")


def _train(tmp_path: Path, name: str, nproc: int, spec: TrainSpec, train: Path, test: Path, env=None,
           *extra: str) -> Path:
    out = tmp_path / name
    cmd = [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "infodissect.cli", "train", "model",
           "--spec", json.dumps(spec.__dict__), "--train", str(train), "--test", str(test),
           "--out", str(out / "model"), "--checkpoints", str(out / "ckpt"), "--threads", "1", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    out.mkdir(exist_ok=True)
    (out / "log").write_text(res.stdout + res.stderr)
    return out if res.returncode == 0 else out.with_suffix(f".rc{res.returncode}")


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model" / "model.pt", weights_only=False)["state_dict"]


def test_two_process_gloo_ddp_matches_one_process(tmp_path):
    train, test = _store(tmp_path / "train.zarr", 64), _store(tmp_path / "test.zarr", 16, seed=1)
    spec = TrainSpec(epochs=2, batch_size=8, lr=0.05, width=8, window=2)
    one = _train(tmp_path, "one", 1, spec, train, test)
    two = _train(tmp_path, "two", 2, spec, train, test)
    assert one.name == "one" and two.name == "two", (one / "log").read_text()[-2000:] + (two / "log").read_text()[-2000:]
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")
        moved += int(not torch.equal(a[k], build_model(4, width=8).state_dict()[k]))
    assert moved > 10, "training must change the weights"


def test_killed_training_resumes_to_the_same_result(tmp_path):
    train, test = _store(tmp_path / "train.zarr", 48), _store(tmp_path / "test.zarr", 16, seed=1)
    spec = TrainSpec(epochs=3, batch_size=8, lr=0.05, width=8, window=2, snapshots=[0, 1, 3])
    full = _train(tmp_path, "full", 1, spec, train, test)
    killed = _train(tmp_path, "part", 1, spec, train, test, env={"INFODISSECT_FAULT": "epoch:1"})
    assert killed.name != "part" and not (tmp_path / "part" / "model" / "model.pt").exists()
    assert torch.load(tmp_path / "part" / "ckpt" / "last.pt", weights_only=False)["epoch"] == 1
    # Snapshots wait beside the checkpoint (a workflow manager deletes a failed job's outputs, not its checkpoints).
    assert (tmp_path / "part" / "ckpt" / "snapshots" / "epoch1.pt").exists()
    assert not (tmp_path / "part" / "model" / "snapshots").exists()
    resumed = _train(tmp_path, "part", 1, spec, train, test)
    assert "resuming identity from epoch 1" in (resumed / "log").read_text()
    # The killed attempt's log survives the rerun, in the checkpoint directory.
    attempts = (tmp_path / "part" / "ckpt" / "attempts.log").read_text()
    assert attempts.count("=== attempt") == 2 and attempts.index("epoch 1/3") < attempts.index("resuming identity")
    for k, v in _weights(full).items():
        torch.testing.assert_close(_weights(resumed)[k], v, rtol=0, atol=1e-6)
    # training.snapshots: the weights before training and after epochs 1 and 3, the same whether killed or not.
    snap = {e: torch.load(resumed / "model" / "snapshots" / f"epoch{e}.pt", weights_only=False) for e in (0, 1, 3)}
    assert sorted(p.name for p in (resumed / "model" / "snapshots").iterdir()) == ["epoch0.pt", "epoch1.pt",
                                                                                 "epoch3.pt"]
    assert snap[1]["epoch"] == 1 and snap[0]["classes"] == torch.load(resumed / "model" / "model.pt",
                                                                      weights_only=False)["classes"]
    for k, v in _weights(full).items():
        torch.testing.assert_close(snap[3]["state_dict"][k], v, rtol=0, atol=1e-6)
        first = torch.load(full / "model" / "snapshots" / "epoch0.pt", weights_only=False)["state_dict"][k]
        assert torch.equal(snap[0]["state_dict"][k], first)
    assert any(not torch.equal(snap[0]["state_dict"][k], snap[1]["state_dict"][k]) for k in snap[0]["state_dict"])
    metrics = (resumed / "model" / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,train_loss,train_accuracy,test_loss,test_accuracy") and len(metrics) == 4
    assert json.loads((resumed / "model" / "config.json").read_text())["spec"]["epochs"] == 3
    factors = (resumed / "model" / "accuracy_by_factor.csv").read_text()
    assert "expression,happiness" in factors and "yaw,bin0" in factors


def test_training_killed_mid_epoch_resumes_from_its_step_checkpoint(tmp_path):
    train, test = _store(tmp_path / "train.zarr", 48), _store(tmp_path / "test.zarr", 16, seed=1)
    spec = TrainSpec(epochs=2, batch_size=8, lr=0.05, width=8, window=2)  # 6 steps per epoch
    full = _train(tmp_path, "full", 2, spec, train, test)
    steps = ("--checkpoint-steps", "2")
    killed = _train(tmp_path, "part", 2, spec, train, test, {"INFODISSECT_FAULT": "step:10"}, *steps)
    assert killed.name != "part" and not (tmp_path / "part" / "model" / "model.pt").exists()
    state = torch.load(tmp_path / "part" / "ckpt" / "last.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (1, 4) and state["running"][2] == 32  # 4 global batches seen
    resumed = _train(tmp_path, "part", 2, spec, train, test, None, *steps)
    assert "resuming identity from epoch 1, step 4" in (resumed / "log").read_text(), (resumed / "log").read_text()
    for k, v in _weights(full).items():
        torch.testing.assert_close(_weights(resumed)[k], v, rtol=0, atol=1e-6)
    # The interrupted epoch's training loss and accuracy count every batch once.
    assert (resumed / "model" / "metrics.csv").read_text().split("\n")[2].split(",")[1:3] == \
        (full / "model" / "metrics.csv").read_text().split("\n")[2].split(",")[1:3]


@pytest.mark.parametrize("set_name", ["train", "revcorr"])
def test_on_the_fly_rendering_feeds_the_same_batches_as_the_stored_set(tmp_path, set_name):
    """A design table rendered batch by batch gives the batches of its stored, rendered copy: codes looked up in
    the identity table (a crossed set) or carried by each row (a revcorr set, whose images have their own)."""
    from infodissect.config import load_config
    from infodissect.faces.model import model_from_config
    from infodissect.stimuli.design import build_design
    from infodissect.stimuli.store import camera_from_config, render_design
    from infodissect.store import write_zarr
    from infodissect.train.data import RenderedBatches

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "test.yaml")
    st = cfg["stimuli"]
    set_spec = st["sets"][set_name] if set_name == "train" else dict(st["sets"][set_name], samples_per_identity=12)
    spec = {"seed": cfg["seed"], "identities": st["identities"], "generator": st["generator"],
            "factors": st["factors"], "set": set_spec, "name": set_name}
    design = build_design(set_name, spec)
    assert ("shape_coeff" in design) == (set_name == "revcorr")
    with atomic_store(tmp_path / "design.zarr") as tmp:
        write_zarr(design.chunk({"sample": 8}), tmp)
    images = np.concatenate([img for _, img, _ in render_design(model_from_config(st["generator"]), design,
                                                                camera_from_config(st["render"]), 8)])
    stored = design.assign(image=(("sample", "y", "x", "channel"), images))
    with atomic_store(tmp_path / "stored.zarr") as tmp:
        write_zarr(stored.chunk({"sample": 8}), tmp)
    labels = task_labels(tmp_path / "design.zarr", "identity")
    render_spec = {"generator": st["generator"], "render": st["render"]}
    fly = list(RenderedBatches(tmp_path / "design.zarr", labels, 8, render_spec, seed=1, window=2).epoch(0))
    disk = list(StoreBatches(tmp_path / "stored.zarr", labels, 8, seed=1, window=2).epoch(0))
    assert len(fly) == len(disk) == design.sizes["sample"] // 8
    for (xf, yf), (xd, yd) in zip(fly, disk):
        assert torch.equal(yf, yd)
        diff = (xf - xd).abs()
        # Same rows, rendered in other batch compositions: equal up to the last grey level.
        assert float(diff.max()) <= 2 / 255 + 1e-6 and float(diff.mean()) < 0.05 / 255


def test_modules_are_registered_in_forward_order():
    """The leaf module registered right after each convolution is its batch norm (for batch-norm merging)."""
    leaves = [(n, m) for n, m in build_model(4, width=8).named_modules() if not list(m.children())]
    for (name, mod), (nxt, follower) in zip(leaves, leaves[1:]):
        if isinstance(mod, torch.nn.Conv2d):
            assert isinstance(follower, torch.nn.BatchNorm2d) and nxt.rpartition(".")[0] == name.rpartition(".")[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_meeting_at_a_rendezvous_train_what_one_process_trains(tmp_path):
    """The multi-node path for real: two launchers (one per 'node', here both on localhost) whose
    torchruns join one c10d rendezvous, one Gloo process each. They train what two processes of one
    standalone torchrun train (which the test above ties to one process)."""
    train, test = _store(tmp_path / "train.zarr", 48), _store(tmp_path / "test.zarr", 16, seed=1)
    spec = TrainSpec(epochs=2, batch_size=8, lr=0.05, width=8, window=2)
    one = _train(tmp_path, "one", 2, spec, train, test)
    out = tmp_path / "nodes"
    args = ["--spec", json.dumps(spec.__dict__), "--train", str(train), "--test", str(test), "--out",
            str(out / "model"), "--checkpoints", str(out / "ckpt"), "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INFODISSECT_RDZV_ENDPOINT": f"127.0.0.1:{_free_port()}",
           "INFODISSECT_RDZV_ID": "test-two-nodes"}
    launch = [sys.executable, "-m", "infodissect.cli", "train", "launch", "--nodes", "2", "--nproc-per-node", "1",
              "--"]
    nodes = [subprocess.Popen(launch + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), "\n".join(logs)[-3000:]
    assert "on 2 process(es)" in "".join(logs) and "--rdzv-backend c10d" in "".join(logs)
    for k, v in _weights(one).items():
        torch.testing.assert_close(_weights(out)[k], v, rtol=0, atol=1e-6, msg=f"{k} differs")


def test_launch_needs_a_rendezvous_for_several_nodes():
    from infodissect.train.launch import LaunchError, expand_hostlist, torchrun_args

    assert torchrun_args(1, 4, {})[:1] == ["--standalone"]
    with pytest.raises(LaunchError, match="SLURM_JOB_NODELIST"):
        torchrun_args(2, 1, {})
    args = torchrun_args(3, 4, {"SLURM_JOB_NODELIST": "gpu[07-09]", "SLURM_JOB_ID": "42"}, port=29600)
    assert args[args.index("--rdzv-endpoint") + 1] in ("gpu07:29600",) and args[args.index("--rdzv-id") + 1] == "42"
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]


def test_a_store_from_another_generator_version_stops_training_before_it_starts(tmp_path):
    import zarr

    train, test = _store(tmp_path / "train.zarr", 16), _store(tmp_path / "test.zarr", 16, seed=1)
    group = zarr.open_group(str(train), mode="r+")
    group.attrs["generator_version"] = "0.9"
    zarr.consolidate_metadata(str(train))
    write_manifest(train)  # as an older infodissect would have finished it
    spec = TrainSpec(epochs=1, batch_size=8, width=8)
    res = _train(tmp_path, "old", 1, spec, train, test)
    log = (tmp_path / "old" / "log").read_text()
    assert res.name != "old" and "generator version '0.9'" in log and "epoch" not in log, log[-2000:]
    assert not (tmp_path / "old" / "ckpt" / "last.pt").exists()


def _people_store(path: Path, first: int, people: int, per: int, pool: str, seed: int = 0,
                  expressions: tuple[str, ...] = ("neutral", "happiness")) -> Path:
    """A stimulus-format store of identities first..first+people-1 whose images show their expression
    (a bright left or right half) under noise: an expression task a network can learn and transfer."""
    rng = np.random.default_rng(seed)
    n = people * per
    ident = first + np.repeat(np.arange(people), per)
    expr = np.arange(n) % len(expressions)
    img = rng.uniform(0, 120, size=(n, 16, 16, 3))
    img[expr == 1, :, :8] += 120
    img[expr == 0, :, 8:] += 120
    levels = ["neutral", "happiness", "fear"]
    ds = xr.Dataset({"image": (("sample", "y", "x", "channel"), np.clip(img, 0, 255).astype(np.uint8))},
                    coords={"identity": ("sample", ident), "yaw": ("sample", rng.uniform(-45, 45, n)),
                            "expression": ("sample", np.asarray(expressions, dtype=object)[expr])})
    ds.attrs.update(identities=4, pool=pool, set=path.stem, generator_version=GENERATOR_VERSION, factors=json.dumps({
        "identity": {"kind": "categorical"}, "yaw": {"kind": "continuous"},
        "expression": {"kind": "categorical", "levels": levels}}))
    with atomic_store(path) as tmp:
        ds.chunk({"sample": 8}).to_zarr(tmp, mode="w")
    return path


def _saved_model(path: Path, task: str, classes: list[str], train: Path | None = None, steps: int = 0) -> Path:
    """A model.pt as the training stage writes it, optionally trained for a few in-process steps."""
    from infodissect.train.loop import autocast, train_step

    torch.manual_seed(0)
    model = build_model(len(classes), width=8)
    if steps:
        labels = task_labels(train, task, tuple(classes))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        batches = StoreBatches(train, labels, 8, seed=0, window=2)
        for epoch in range(steps):
            for x, y in batches.epoch(epoch):
                train_step(model, opt, x, y, autocast(torch.device("cpu")))
    spec = TrainSpec(task=task, width=8).__dict__
    torch.save({"state_dict": model.state_dict(), "classes": classes, "task": task, "spec": spec,
                "readout_layers": list(READOUT_LAYERS), "architecture": "ResNet10"}, path)
    return path


def test_scores_count_what_they_say():
    from infodissect.train.evaluate import scores

    truth = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 1, 0, 1, 0, 2, 2])
    s = scores(truth, preds, ("a", "b", "c", "d"))
    assert s["n"] == 8 and s["accuracy"] == 6 / 8 and s["chance"] == 4 / 8
    assert s["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3) and s["chance_balanced"] == 1 / 3
    assert [c["class"] for c in s["per_class"]] == ["a", "b", "c"]  # d never occurs
    assert s["confusion"]["matrix"][0] == [3, 1, 0, 0] and s["confusion"]["matrix"][1] == [1, 1, 0, 0]
    assert np.trace(np.asarray(s["confusion"]["matrix"])) == 6


def test_evaluate_command_scores_a_model_on_heldout_identities(tmp_path):
    from infodissect.cli import main
    from infodissect.nets import network_input

    train = _people_store(tmp_path / "train.zarr", 0, 4, 16, "train")
    held = _people_store(tmp_path / "heldout.zarr", 4, 3, 8, "heldout", seed=1)
    model = _saved_model(tmp_path / "model.pt", "expression", ["neutral", "happiness", "fear"], train, steps=3)
    out = tmp_path / "expression_s1" / "heldout.json"
    assert main(["train", "evaluate", "--model", str(model), "--stimuli", str(held), "--train", str(train),
                 "--name", "expression_s1", "--batch-size", "5", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["model"], res["task"], res["set"], res["pool"]) == ("expression_s1", "expression", "heldout", "heldout")
    assert res["n"] == 24 and res["identities"] == 3 and res["shared_identities"] == 0
    assert res["classes_seen"] == ["neutral", "happiness"] and res["chance"] == 0.5
    # The same answers as a forward pass over the whole set, in order.
    net = build_model(3, width=8)
    net.load_state_dict(torch.load(model, weights_only=False)["state_dict"])
    with torch.inference_mode():
        preds = net.eval()(network_input(xr.open_zarr(held).image.values)).argmax(1).numpy()
    truth = np.asarray([["neutral", "happiness"].index(e) for e in xr.open_zarr(held).expression.values])
    assert len(set(preds.tolist())) > 1, "the test needs a model whose answers depend on the image"
    assert res["accuracy"] == float(np.mean(preds == truth)) > 0.9
    assert np.asarray(res["confusion"]["matrix"])[:2, :2].sum() == 24
    assert {r["factor"] for r in res["by_factor"]} == {"identity", "yaw", "expression"}
    # Evaluated on the training identities, the overlap shows.
    again = tmp_path / "again.json"
    assert main(["train", "evaluate", "--model", str(model), "--stimuli", str(train), "--train", str(train),
                 "--out", str(again)]) == 0
    assert json.loads(again.read_text())["shared_identities"] == 4


def test_evaluate_refuses_classes_the_model_never_saw_and_identity_models_on_new_people(tmp_path, caplog):
    from infodissect.cli import main
    from infodissect.train.evaluate import EvaluationError, evaluate_model

    train = _people_store(tmp_path / "train.zarr", 0, 4, 8, "train")
    held = _people_store(tmp_path / "heldout.zarr", 4, 2, 6, "heldout", expressions=("neutral", "happiness", "fear"))
    model = _saved_model(tmp_path / "model.pt", "expression", ["neutral", "happiness", "fear"])
    with pytest.raises(EvaluationError, match=r"expression class\(es\) \['fear'\] that model m_s0 never saw"):
        evaluate_model(model, held, train, name="m_s0")
    out = tmp_path / "refused.json"
    assert main(["train", "evaluate", "--model", str(model), "--stimuli", str(held), "--train", str(train),
                 "--out", str(out)]) == 2
    assert "never saw in training" in caplog.text and not out.exists()
    ident = _saved_model(tmp_path / "identity.pt", "identity", ["0", "1", "2", "3"])
    with pytest.raises(EvaluationError, match="has no class for"):
        evaluate_model(ident, held, train)


def test_adversarial_training_with_a_consistency_loss_is_the_same_on_two_processes(tmp_path):
    """Adversarial training (PGD from the clean image, consistency loss at block3_out) changes what is learnt, and
    two Gloo processes learn what one learns."""
    train, test = _store(tmp_path / "train.zarr", 32), _store(tmp_path / "test.zarr", 16, seed=1)
    adv = {"budget": 8, "steps": 2, "layer": "block3_out", "weight": 1.0}
    spec = TrainSpec(epochs=1, batch_size=8, lr=0.05, width=8, window=2, adversarial=adv)
    one = _train(tmp_path, "one", 1, spec, train, test)
    two = _train(tmp_path, "two", 2, spec, train, test)
    plain = _train(tmp_path, "plain", 1, TrainSpec(epochs=1, batch_size=8, lr=0.05, width=8, window=2), train, test)
    assert {one.name, two.name, plain.name} == {"one", "two", "plain"}, (one / "log").read_text()[-2000:]
    assert "adversarial training: PGD 8/255 in 2 steps, consistency loss at block3_out" in (one / "log").read_text()
    a, b, c = _weights(one), _weights(two), _weights(plain)
    for k in a:  # all-reduce order moves weights by ~1e-5; adversarial vs plain training by ~1e-1
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=f"{k} differs")
    assert max(float((a[k] - c[k]).abs().max()) for k in a if a[k].is_floating_point()) > 0.05
    saved = torch.load(one / "model" / "model.pt", weights_only=False)
    assert saved["spec"]["adversarial"] == adv  # the model records how it was trained
