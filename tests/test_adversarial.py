"""The adversarial stage: targets, the ensemble, the attack's budget and uint8 rounding, and refused settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from infodissect.analyses.adversarial import (ENSEMBLE, AdversarialError, Ensemble, Spec, attack_images,
                                              changed_units, check_spec, consistency, distance_ratio, map_layers,
                                              response_correlation, target_classes, to_uint8, topk_overlap)
from infodissect.nets import build_model, network_input


def _spec(**kw) -> Spec:
    base = dict(budgets=[0, 8], attack="mifgsm", steps=5, targeted=True, samples=0, batch_size=16, seed=0)
    return Spec(**{**base, **kw})


def _nets(n: int = 2, classes: int = 5) -> list[torch.nn.Module]:
    """Linear classifiers of 32 px images (seeded): logits differ by ~1, a budget of 8/255 moves them by more."""
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, classes)).eval())
    return out


def test_targets_are_other_classes_drawn_per_sample_whatever_the_subset():
    true = np.arange(40) % 7
    samples = np.arange(100, 140)
    t = target_classes(true, samples, 7, seed=3)
    assert (t != true).all() and t.min() >= 0 and t.max() < 7 and len(set(t.tolist())) > 3
    assert np.array_equal(target_classes(true[10:20], samples[10:20], 7, seed=3), t[10:20])
    assert not np.array_equal(target_classes(true, samples, 7, seed=4), t)
    with pytest.raises(AdversarialError, match="two classes"):
        target_classes(true[:3] * 0, samples[:3], 1, seed=0)


def test_ensemble_averages_its_members_logits():
    torch.manual_seed(0)
    a, b = build_model(5, width=8).eval(), build_model(5, width=8).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(Ensemble([a, b])(x), (a(x) + b(x)) / 2, atol=1e-6)
        assert torch.allclose(Ensemble([a, a])(x), a(x), atol=1e-6)


def test_stored_images_stay_within_budget_and_success_is_judged_on_them():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    images[:4] = 0  # values at the range's edges: clipping must keep the budget
    images[4:8] = 255
    nets = _nets()
    ens = Ensemble(nets).eval()
    judges = {"a": nets[0], "b": nets[1], ENSEMBLE: ens}
    with torch.no_grad():
        true = ens(network_input(images)).argmax(1).numpy()
    target = target_classes(true, np.arange(24), 5, seed=0)
    for budget in (0, 1, 8):
        res = attack_images(ens, judges, images, true, target, _spec(budgets=[budget]), budget)
        diff = res["image"].astype(int) - images.astype(int)
        assert np.abs(diff).max() <= budget and res["linf"].max() <= budget
        assert np.array_equal(res["linf"], np.abs(diff).reshape(24, -1).max(1))
        with torch.no_grad():
            stored = {k: m(network_input(res["image"])).argmax(1).numpy() for k, m in judges.items()}
        for k in judges:  # success = the judge answers the target on the stored uint8 image
            assert np.array_equal(res["rounded"][k], stored[k] == target)
        if budget == 0:
            assert np.array_equal(res["image"], images) and not res["rounded"][ENSEMBLE].any()
    # A white-box targeted attack at 8/255 fools the ensemble it attacks on most images (5 classes, 5 steps);
    # the all-0 / all-255 images can move one way only.
    assert res["rounded"][ENSEMBLE][8:].mean() >= 0.9


def test_untargeted_success_is_any_wrong_class():
    images = np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    nets = _nets(1)
    with torch.no_grad():
        true = nets[0](network_input(images)).argmax(1).numpy()
    res = attack_images(nets[0], {ENSEMBLE: nets[0]}, images, true, None, _spec(targeted=False), 8)
    with torch.no_grad():
        pred = nets[0](network_input(res["image"])).argmax(1).numpy()
    assert np.array_equal(res["rounded"][ENSEMBLE], pred != true) and res["rounded"][ENSEMBLE].mean() >= 0.9


def test_rounding_to_uint8_is_to_the_nearest_level():
    x = torch.tensor([0.0, 0.5 / 255, 1.49 / 255, 1.51 / 255, 1.0, 1.2, -0.1]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 1, 2, 255, 255, 0]
    assert to_uint8(x).shape == (1, 1, 7, 3)


@pytest.mark.parametrize("change, key", [
    (dict(attack="fgsm"), "adversarial.attack"), (dict(budgets=[]), "adversarial.budgets"),
    (dict(budgets=[2, 2]), "repeats"), (dict(budgets=[300]), "adversarial.budgets"),
    (dict(steps=0), "adversarial.steps"), (dict(batch_size=0), "adversarial.batch_size"),
    (dict(samples=-1), "adversarial.samples")])
def test_bad_settings_are_refused_by_name(change, key):
    with pytest.raises(AdversarialError, match=key):
        check_spec(_spec(**change))


def test_consistency_measures_are_exact_on_known_cases():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 6))
    assert np.allclose(response_correlation(real, real), 1) and np.allclose(response_correlation(real, -real), -1)
    assert np.allclose(response_correlation(real, 3 * real + 1), 1)
    assert np.isnan(response_correlation(real, np.ones_like(real))).all()  # a constant unit has no correlation
    assert np.array_equal(topk_overlap(real, real, 5), np.ones(6)) and np.array_equal(topk_overlap(real, -real, 5),
                                                                                       np.zeros(6))
    flipped = real.copy()
    flipped[:, 0] = real[::-1, 0]
    order = np.argsort(-real[:, 0])[:5]
    expect = np.isin(order, np.argsort(-flipped[:, 0])[:5]).mean()
    assert topk_overlap(real, flipped, 5)[0] == expect
    true = np.repeat(np.array(["a", "b", "c", "d"], dtype=object), 10)
    target = np.roll(true, 10)
    centroids = {c: real[true == c].mean(0) for c in "abcd"}
    at_target = np.stack([centroids[t] for t in target])
    assert distance_ratio(real, real, true, target) == 0
    assert np.isclose(distance_ratio(real, at_target, true, target), 1)
    assert np.isclose(distance_ratio(real, real + 0.5 * (at_target - real), true, target), 0.5)


def _tree(resp: np.ndarray, coords: dict) -> xr.DataTree:
    """An activation store: one map layer (sample, unit, y, x) whose spatial mean is ``resp`` (sample, unit)."""
    act = np.repeat(np.repeat(resp[:, :, None, None], 2, 2), 2, 3).astype(np.float32)
    node = xr.Dataset({"activation": (("sample", "unit", "y", "x"), act)}, coords=coords)
    return xr.DataTree.from_dict({"/": xr.Dataset(coords=coords, attrs={"task": "identity"}), "block4_out": node})


def test_consistency_of_units_that_keep_or_lose_their_semantics():
    """Unit 0 keeps following the true identity on adversarial images, unit 1 follows the target instead."""
    rng = np.random.default_rng(1)
    n = 120
    true = np.repeat(np.arange(6), 20)
    target = (true + 1 + rng.integers(0, 5, n)) % 6
    code = rng.normal(size=6)
    noise = lambda: 0.1 * rng.normal(size=n)  # noqa: E731
    real = np.stack([code[true] + noise(), code[true] + noise()], 1)
    adv = np.stack([code[true] + noise(), code[target] + noise()], 1)
    samples = np.arange(1000, 1000 + n)
    base = {"sample": samples, "identity": ("sample", true.astype(str).astype(object))}
    adv_coords = {**base, "source_sample": ("sample", samples), "target": ("sample", target.astype(str).astype(object))}
    ds = consistency(_tree(real, base), {8: _tree(adv, adv_coords)}, ["block4_out"], 0.1, "identity")
    c = ds.sel(budget=8, layer="block4_out")
    assert c["response_correlation"].values[0] > 0.95 and c["response_correlation"].values[1] < 0.5
    assert c["topk_overlap"].values[0] > c["topk_overlap"].values[1]
    assert c["mi_true"].values[0] > 1 and c["mi_true"].values[1] < 0.3
    assert c["mi_target"].values[1] > 1 and c["mi_target"].values[0] < 0.3
    assert np.allclose(c["mi_real"].values, ds["mi_real"].sel(budget=8, layer="block4_out").values)
    assert 0.3 < float(c["distance_ratio"]) < 1.0  # half the representation moved to the target class
    with pytest.raises(AdversarialError, match="source images"):
        consistency(_tree(real[:60], {k: (v[0], v[1][:60]) if isinstance(v, tuple) else v[:60]
                                      for k, v in base.items()}), {8: _tree(adv, adv_coords)}, ["block4_out"], 0.1,
                    "identity")


def _consistency_store(keeps: bool, budgets=(0, 8)) -> xr.Dataset:
    """A model's consistency store on 120 images: its one unit keeps following the true identity on adversarial
    images (``keeps``) or follows the attack's target."""
    rng = np.random.default_rng(2)
    n = 120
    true = np.repeat(np.arange(6), 20)
    target = (true + 1 + rng.integers(0, 5, n)) % 6
    code = rng.normal(size=6)
    real = (code[true] + 0.1 * rng.normal(size=n))[:, None]
    samples = np.arange(n)
    base = {"sample": samples, "identity": ("sample", true.astype(str).astype(object))}
    adv_coords = {**base, "source_sample": ("sample", samples), "target": ("sample", target.astype(str).astype(object))}
    adv = {b: _tree(real if b == 0 else (code[true if keeps else target] + 0.1 * rng.normal(size=n))[:, None],
                    adv_coords) for b in budgets}
    return consistency(_tree(real, base), adv, ["block4_out"], 0.1, "identity")


def test_models_compared_on_the_same_adversarial_images(tmp_path):
    """The stage across models: the model whose unit keeps its semantics scores higher on every measure, beside its
    clean accuracy and the attack's success on it; stores of other budgets and a missing metrics file refused."""
    from infodissect.stages import run_stage
    from infodissect.store import save_dataset

    consistency_paths, metrics = [], []
    for name, keeps, acc in (("identity_s0", False, 1.0), ("identity_s2", True, 0.985)):
        ds = _consistency_store(keeps)
        ds.attrs["model"] = name
        path = tmp_path / name / "test_consistency.zarr"
        save_dataset(ds, path)
        consistency_paths.append(str(path))
        (tmp_path / name / "metrics.csv").write_text(f"epoch,test_accuracy\n1,0.5\n2,{acc}\n")
        metrics.append(str(tmp_path / name / "metrics.csv"))
    summary = xr.Dataset({"success": (("budget", "model"), [[0.0, 0.0, 0.0], [0.7, 0.7, 0.02]])},
                         coords={"budget": [0, 8], "model": ["identity_s0", "ensemble", "identity_s2"],
                                 "role": ("model", ["member", "ensemble", "member"])},
                         attrs={"targeted": 1, "source": "test.zarr", "attack": "mifgsm"})
    save_dataset(summary, tmp_path / "summary.zarr")
    inputs = {"consistency": consistency_paths, "metrics": metrics, "summary": str(tmp_path / "summary.zarr")}
    outputs = {"out": tmp_path / "across.zarr", "figure": tmp_path / "across.png"}
    numbers = run_stage("adversarial_compare", {"accuracy_margin": 2.0}, inputs, outputs)
    out = xr.open_zarr(tmp_path / "across.zarr").load()
    assert out["response_correlation"].dims == ("model", "budget", "layer")
    top = out.sel(budget=8, layer="block4_out")
    assert float(top["response_correlation"].sel(model="identity_s2")) > 0.9 > 0.5 > float(
        top["response_correlation"].sel(model="identity_s0"))
    assert float(top["mi_true"].sel(model="identity_s2")) > 1 > 0.3 > float(top["mi_true"].sel(model="identity_s0"))
    assert float(top["mi_target"].sel(model="identity_s0")) > 1
    assert out["clean_accuracy"].values.tolist() == [100.0, 98.5]
    assert out["success"].sel(budget=8).values.tolist() == [0.7, 0.02]
    assert numbers["largest gap in clean accuracy"] == "1.5 points (within the 2-point margin)"
    assert numbers["identity_s2: fooled at 8/255"] == "2.0%"
    assert (tmp_path / "across.png").stat().st_size > 20_000
    other = _consistency_store(True, budgets=(0, 4))
    other.attrs["model"] = "identity_s3"
    save_dataset(other, tmp_path / "identity_s3" / "test_consistency.zarr")
    (tmp_path / "identity_s3" / "metrics.csv").write_text("epoch,test_accuracy\n1,0.9\n")
    third = {**inputs, "consistency": [*consistency_paths, str(tmp_path / "identity_s3" / "test_consistency.zarr")],
             "metrics": [*metrics, str(tmp_path / "identity_s3" / "metrics.csv")]}
    with pytest.raises(AdversarialError, match="identity_s3: its consistency store has budgets"):
        run_stage("adversarial_compare", {"accuracy_margin": 2.0}, third, outputs)
    with pytest.raises(AdversarialError, match="--metrics 1"):
        run_stage("adversarial_compare", {"accuracy_margin": 2.0}, {**inputs, "metrics": metrics[:1]}, outputs)
    with pytest.raises(AdversarialError, match="in the order of --consistency"):
        run_stage("adversarial_compare", {"accuracy_margin": 2.0}, {**inputs, "metrics": metrics[::-1]}, outputs)
    save_dataset(summary.sel(budget=[8]), tmp_path / "summary8.zarr")
    with pytest.raises(AdversarialError, match="no budget \\[0\\]"):
        run_stage("adversarial_compare", {"accuracy_margin": 2.0}, {**inputs, "summary": str(tmp_path / "summary8.zarr")},
                  outputs)


def test_the_unit_that_changed_most_and_the_layers_whose_maps_are_shown():
    """The unit whose mean response moved most in SDs of its real responses is picked per image (a unit that never
    varies is skipped, however much it moves); the deepest map layers of at least 4 and 8 positions are shown."""
    rng = np.random.default_rng(3)
    real = rng.normal(size=(50, 3)) * np.array([1.0, 10.0, 0.0])  # unit 2 never varies on real images
    adv = real.copy()
    adv[:, 0] += 2.0  # 2 SDs of unit 0
    adv[:, 1] += 5.0  # half an SD of unit 1
    adv[:, 2] += 100.0
    # The real store holds the images in another order and one more; ``where`` finds each adversarial image's.
    order = np.r_[rng.permutation(50), 50]
    real_store = np.concatenate([real, rng.normal(size=(1, 3))])[order]
    where = np.argsort(order)[:50]
    coords = {"sample": np.arange(50)}
    unit, change, maps_r, maps_a = changed_units(_tree(real_store, {"sample": np.arange(51)}), _tree(adv, coords),
                                                 "block4_out", where, np.array([0, 7]))
    sd = real[:, 0].std()
    assert unit.tolist() == [0, 0] and np.allclose(change, 2.0 / sd, rtol=1e-4)
    assert maps_r.shape == (2, 2, 2) and np.allclose(maps_a - maps_r, 2.0, atol=1e-4)
    act = lambda s: xr.Dataset({"activation": (("sample", "unit", "y", "x"), np.zeros((1, 1, s, s)))})  # noqa: E731
    tree = xr.DataTree.from_dict({"a": act(16), "b": act(8), "c": act(4), "d": act(2),
                                  "pool": xr.Dataset({"activation": (("sample", "unit"), np.zeros((1, 1)))})})
    assert map_layers(tree, ["a", "b", "c", "d", "pool"]) == ["b", "c"]
    assert map_layers(tree, ["a", "d"]) == ["a"]
    assert map_layers(tree, ["d", "pool"]) == []


def _dissection(labels: list[str], iou: np.ndarray, detector: list[bool], concepts=("a", "b", "c")) -> xr.DataTree:
    """A dissection store with one layer (block3_out) of len(labels) units over ``concepts``."""
    node = xr.Dataset({"iou": (("quantile", "unit", "concept"), iou[None]),
                       "label": (("quantile", "unit"), np.asarray([labels], dtype=object)),
                       "detector": (("quantile", "unit"), np.asarray([detector]))},
                      coords={"quantile": [0.005], "unit": np.arange(len(labels)), "concept": list(concepts)})
    return xr.DataTree.from_dict({"/": xr.Dataset(), "block3_out": node})


def test_dissection_labels_on_real_and_adversarial_images():
    """Per unit: is its real-image label (budget 0) still its label under attack, and that concept's IoU there."""
    from infodissect.analyses.adversarial import dissection_consistency

    real = _dissection(["a", "b", "c"], np.array([[0.3, 0.1, 0.0], [0.0, 0.2, 0.1], [0.0, 0.0, 0.02]]),
                       [True, True, False])
    adv = _dissection(["a", "c", "c"], np.array([[0.25, 0.0, 0.0], [0.0, 0.05, 0.3], [0.0, 0.0, 0.01]]),
                      [True, True, False])
    ds = dissection_consistency({0: real, 8: adv}, ["block3_out", "logits"], [0, 8], 5)
    at8 = ds.sel(budget=8, layer="block3_out")
    assert at8["label_kept"].values[:3].tolist() == [1, 0, 1] and np.isnan(at8["label_kept"].values[3:]).all()
    assert np.allclose(at8["iou_adv"].values[:3], [0.25, 0.05, 0.01])  # the real label's concept, not the new one
    assert np.allclose(ds["iou_real"].sel(layer="block3_out").values[:3], [0.3, 0.2, 0.02])
    assert ds["detector_real"].sel(layer="block3_out").values[:3].tolist() == [1, 1, 0]
    assert (ds.sel(budget=0, layer="block3_out")["label_kept"].values[:3] == 1).all()
    # Shuffled labels agree with probability sum_k p_real(k) p_adv(k): (1/3)(1/3) + (1/3)(2/3) for c.
    assert np.isclose(float(ds["label_chance"].sel(budget=8, layer="block3_out")), 1 / 3)
    assert np.isnan(ds["label_kept"].sel(layer="logits")).all()  # not dissected
    with pytest.raises(AdversarialError, match="budget-0 set"):
        dissection_consistency({8: adv}, ["block3_out"], [0, 8], 5)
    other = _dissection(["a", "b", "d"], np.zeros((3, 3)), [False] * 3, concepts=("a", "b", "d"))
    with pytest.raises(AdversarialError, match="other concepts"):
        dissection_consistency({0: real, 8: other}, ["block3_out"], [0, 8], 5)
