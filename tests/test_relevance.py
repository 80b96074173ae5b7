"""The relevance stage: native LRP against zennit and gradient x input, a planted mouth reader, masking, parts."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from infodissect.analyses.relevance import (ORDERS, CompareSpec, RelevanceError, Spec, aopc, compare, map_correlation,
                                            masked_logits, part_masks, part_shares, patch_scores, removal_order,
                                            removed_masks, run, sample_index, true_classes)
from infodissect.faces.version import GENERATOR_VERSION
from infodissect.nets import build_model
from infodissect.nets.lrp import TRACE, fold_batchnorm, gradient_x_input, lrp
from infodissect.store import save_dataset

MOUTH = 7  # part label of the mouth (infodissect.faces.PART_NAMES)
PARTS = ["background", "skin", "left_eye", "right_eye", "left_brow", "right_brow", "nose", "mouth"]


def _random_model(seed=0, classes=5, width=8, stem="large"):
    """A ResNet-10 with random weights and random batch-norm statistics (eval mode)."""
    torch.manual_seed(seed)
    m = build_model(classes, width=width, stem=stem).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    return m


def _zennit():
    """zennit, importable without torchvision: its package imports torchvision's ResNet blocks for a canonizer
    this project does not use (a CPU torchvision build is not on PyPI), so they are stubbed for the import."""
    if "torchvision" not in sys.modules:
        tv, models, resnet = (types.ModuleType(n) for n in ("torchvision", "torchvision.models",
                                                            "torchvision.models.resnet"))
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        tv.models, models.resnet = models, resnet
        sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})
    import zennit.attribution
    import zennit.composites
    import zennit.rules

    return zennit


def test_folding_keeps_the_outputs_and_leaves_the_model_alone():
    m = _random_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    f = fold_batchnorm(m)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(f(x).numpy(), m(x).numpy(), atol=1e-5)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in f.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_native_lrp_equals_zennit_on_the_folded_network(composite):
    zennit = _zennit()
    from infodissect.nets import Sum

    m = _random_model(1)
    f = fold_batchnorm(m)
    x, t = torch.rand(6, 3, 64, 64), torch.tensor([0, 1, 2, 3, 4, 0])
    ours, logits = lrp(f, x, t, composite)
    norm = [(Sum, zennit.rules.Norm())]  # this network's residual sum is its own module
    comp = (zennit.composites.EpsilonPlusFlat(layer_map=norm) if composite == "epsilon_plus_flat"
            else zennit.composites.EpsilonGammaBox(low=0.0, high=1.0, layer_map=norm))
    with zennit.attribution.Gradient(model=f, composite=comp) as attributor:
        _, theirs = attributor(x, torch.eye(5)[t] * logits.gather(1, t.view(-1, 1)))
    scale = float(theirs.abs().max())
    assert scale > 0 and float((ours - theirs).abs().max()) <= 1e-5 * scale


def test_lrp0_with_zero_biases_is_gradient_x_input_and_conserves_the_logit():
    m = fold_batchnorm(_random_model(2))
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
            mod.bias.data.zero_()
    x, t = torch.rand(5, 3, 64, 64), torch.tensor([0, 1, 2, 3, 4])
    trace = {}
    r, logits = lrp(m, x, t, "lrp0", trace)
    g, _ = gradient_x_input(m, x, t)
    logit = logits.gather(1, t.view(-1, 1)).squeeze(1)
    np.testing.assert_allclose(r.numpy(), g.numpy(), atol=1e-5 * float(g.abs().max()))
    np.testing.assert_allclose(r.sum((1, 2, 3)).numpy(), logit.numpy(), rtol=1e-5, atol=1e-6)
    assert list(trace) == list(TRACE)
    for name in TRACE:  # conserved at every layer
        np.testing.assert_allclose(trace[name].numpy(), logit.numpy(), rtol=1e-5, atol=1e-6)
    # With biases, the epsilon-plus-flat relevance no longer sums to the logit exactly, but it is finite.
    r2, _ = lrp(fold_batchnorm(_random_model(2)), x, t, "epsilon_plus_flat")
    assert torch.isfinite(r2).all()


# --------------------------------------------------------------------------- a planted mouth reader


def _mouth_reader() -> nn.Module:
    """A ResNet-10 (small stem, width 4) that reads only the mouth: its first convolution responds to red
    (R - (G + B) / 2 at the centre tap), which only the mouth has; every block passes its shortcut on; the
    logits are +-50 (mean response - 0.075)."""
    m = build_model(2, width=4, stem="small").eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.zero_()
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.zero_()
                mod.bias.zero_()
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0 - mod.eps)
        m.conv1.weight[0, :, 1, 1] = torch.tensor([1.0, -0.5, -0.5])
        m.bn1.weight.fill_(1.0)
        for block in (m.block2, m.block3, m.block4):
            conv, bn = block.downsample
            conv.weight[:, :, 0, 0] = torch.eye(conv.out_channels, conv.in_channels)
            bn.weight.fill_(1.0)
        m.fc.weight[1, 0], m.fc.weight[0, 0] = 50.0, -50.0
        m.fc.bias[1], m.fc.bias[0] = -3.75, 3.75  # the mouth cell that reaches the 2 x 2 top map: 0.1 or 0.5
    return m


def _mouth_images(n=24, seed=0, size=32):
    """Grey faces (skin, eyes, a brighter or darker background) whose mouth is red; class 1 = a strongly red
    mouth. Part maps as the renderer labels them."""
    rng = np.random.default_rng(seed)
    parts = np.zeros((n, size, size), np.uint8)
    parts[:, 4:28, 6:26] = 1
    parts[:, 9:12, 9:14], parts[:, 9:12, 18:23] = 2, 3
    parts[:, 14:21, 9:23] = MOUTH
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    bg = rng.uniform(0.2, 0.8, n)
    img = np.empty((n, size, size, 3))
    for i in range(n):
        img[i] = bg[i]
        img[i][parts[i] == 1] = rng.uniform(0.3, 0.9)
        img[i][(parts[i] == 2) | (parts[i] == 3)] = rng.uniform(0.0, 0.3)
        img[i][parts[i] == MOUTH] = [0.5 + 0.4 * y[i], 0.4, 0.4]
    return (np.round(img * 255).astype(np.uint8), parts, y, np.round(bg * 255) / 255)


def test_a_planted_mouth_reader_puts_its_relevance_in_the_mouth():
    m = _mouth_reader()
    images, parts, y, _ = _mouth_images()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert (m(x).argmax(1).numpy() == y).all()  # it reads the mouth right
    f = fold_batchnorm(m)
    t = torch.from_numpy(y)
    for method in ("epsilon_gamma_box", "lrp0", "gradient_x_input"):
        r = (gradient_x_input(m, x, t) if method == "gradient_x_input" else lrp(f, x, t, method))[0].sum(1).numpy()
        share = part_shares(r, parts, len(PARTS))
        assert np.nanmin(share[:, MOUTH]) >= 0.95, method
    # The flat rule spreads each stem unit's relevance over its 3 x 3 window: all of it within one pixel of the mouth.
    r = lrp(f, x, t, "epsilon_plus_flat")[0].sum(1).numpy()
    grown = parts.copy()
    mouth = parts == MOUTH
    near = mouth.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= np.roll(np.roll(mouth, dy, 1), dx, 2)
    grown[near] = MOUTH
    assert np.nanmin(part_shares(r, grown, len(PARTS))[:, MOUTH]) >= 0.95
    assert np.nanmean(part_shares(r, parts, len(PARTS))[:, MOUTH]) >= 0.5


def test_masking_order_masks_and_aopc():
    rel = np.zeros((2, 8, 8))
    rel[0, :4, :4], rel[0, 4:, 4:] = 3.0, -1.0  # patch 0 most relevant, patch 3 least
    rel[1, 4:, :4] = 2.0
    scores = patch_scores(rel, 4)
    np.testing.assert_array_equal(scores, [[48, 0, 0, -16], [0, 0, 32, 0]])
    np.testing.assert_array_equal(removal_order(scores, "morf", 0)[:, 0], [0, 2])
    np.testing.assert_array_equal(removal_order(scores, "lerf", 0)[:, 0], [3, 0])
    rnd = removal_order(scores, "random", 3)
    assert sorted(rnd[0]) == [0, 1, 2, 3] and np.array_equal(rnd, removal_order(scores, "random", 3))
    masks = removed_masks(removal_order(scores, "morf", 0), 2, (2, 2), 4)
    assert masks.shape == (3, 2, 1, 8, 8)
    assert [int(masks[k].sum()) for k in range(3)] == [0, 2 * 2 * 16, 2 * 4 * 16]
    assert bool(masks[1, 0, 0, 0, 0]) and not bool(masks[1, 0, 0, 7, 7])  # the most relevant patch goes first
    with pytest.raises(RelevanceError, match="patch = 3 does not divide"):
        patch_scores(rel, 3)
    np.testing.assert_array_equal(sample_index(10, 4), [0, 3, 6, 9])  # spread through the set
    np.testing.assert_array_equal(sample_index(5, 0), np.arange(5))
    np.testing.assert_array_equal(sample_index(5, 9), np.arange(5))
    # A crossed set is sample-major (image r shows person r mod 4): evenly spaced positions would show two of the
    # four people; spread person by person, the picks show all four.
    people = np.arange(24) % 4
    assert len(np.unique(people[sample_index(24, 4)])) == 2
    picked = sample_index(24, 4, people)
    assert sorted(people[picked]) == [0, 1, 2, 3] and np.all(np.diff(picked) > 0)
    logit = np.array([[[3.0, 1.0], [1.0, 1.0], [0.0, 1.0]]])  # (1, step 3, sample 2)
    np.testing.assert_allclose(aopc(logit)[0], [(0 + 2 + 3) / 3, 0.0])


def test_the_planted_reader_loses_its_evidence_faster_by_relevance_than_at_random_and_parts_go_in_order():
    m = _mouth_reader()
    images, parts, y, bg = _mouth_images(32, seed=1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    t = torch.from_numpy(y)
    r = lrp(fold_batchnorm(m), x, t, "epsilon_gamma_box")[0].sum(1).numpy()
    fill = torch.from_numpy(bg).float().view(-1, 1, 1, 1).expand_as(x)
    area = {}
    for order in ORDERS:
        masks = removed_masks(removal_order(patch_scores(r, 4), order, 0), 8, (8, 8), 4)
        lg, ok = masked_logits([m], x, fill, masks, [t])
        area[order] = aopc(lg[0])
    up = y == 1  # a red mouth: evidence to lose
    assert area["morf"][up].mean() > area["random"][up].mean() > area["lerf"][up].mean()
    masks, order = part_masks(r, parts, len(PARTS))
    assert masks.shape == (len(PARTS) + 1, 32, 1, 32, 32)
    assert (order[0][up] == MOUTH).all()  # the mouth is removed first
    lg, _ = masked_logits([m], x, fill, masks, [t])
    assert (lg[0, 1][up] < lg[0, 0][up]).all()


def _stimulus_store(path, n=24, seed=0):
    images, parts, y, bg = _mouth_images(n, seed)
    ds = xr.Dataset({"image": (("sample", "y", "x", "channel"), images),
                     "parts": (("sample", "y", "x"), parts)},
                    coords={"sample": np.arange(n), "channel": ["r", "g", "b"],
                            "expression": ("sample", np.asarray(["neutral", "happiness"], dtype=object)[y]),
                            "yaw": ("sample", np.linspace(-10, 10, n)), "background": ("sample", bg)},
                    attrs={"set": "test", "generator_version": GENERATOR_VERSION})
    ds["parts"].attrs["part_names"] = PARTS
    save_dataset(ds, path)
    return path


def _save_model(m, path, task="expression", classes=("neutral", "happiness")):
    torch.save({"state_dict": m.state_dict(), "classes": list(classes), "task": task, "architecture": "resnet10",
                "spec": {"width": 4, "stem": "small", "task": task}}, path)
    return path


def test_the_stage_writes_its_store_figures_and_numbers(tmp_path):
    stim = _stimulus_store(tmp_path / "test.zarr")
    model = _save_model(_mouth_reader(), tmp_path / "model.pt")
    spec = Spec(methods=["epsilon_gamma_box", "gradient_x_input"], samples=16, batch_size=8, patch=4, steps=4,
                fill="background", masking_methods=["epsilon_gamma_box"], seed=0)
    outs = {k: tmp_path / f"{k}.png" for k in ("figure", "masking_figure", "parts_figure")}
    numbers = run(spec, {"model": model, "stimuli": stim}, {"out": tmp_path / "rel.zarr", **outs}, "planted")
    ds = xr.open_zarr(tmp_path / "rel.zarr")
    assert ds["relevance"].dims == ("attribution", "sample", "y", "x") and ds.sizes["sample"] == 16
    assert list(ds["attribution"].values) == ["epsilon_gamma_box", "gradient_x_input"]
    assert float(ds["part_share"].sel(attribution="epsilon_gamma_box", part="mouth").min()) >= 0.95
    a = ds["aopc"].sel(masked_by="epsilon_gamma_box").mean("sample")
    assert float(a.sel(order="morf")) > float(a.sel(order="lerf"))
    assert "MoRF / random / LeRF" in next(iter(numbers)) and "mouth 100%" in json.dumps(numbers)
    assert all(p.stat().st_size > 10_000 for p in outs.values())
    # Across models: a model compared with itself correlates 1 and loses as much under its own order.
    cmp = compare([ds, ds.assign_attrs(model="again")], [_mouth_reader()] * 2,
                  [{"task": "expression"}] * 2, xr.open_zarr(stim), xr.open_zarr(stim)["image"].values,
                  CompareSpec(batch_size=8, patch=4, steps=4, fill="background"))
    np.testing.assert_allclose(cmp["map_correlation"].values, 1.0, atol=1e-6)
    np.testing.assert_allclose(cmp["cross_aopc"].values, cmp["cross_aopc"].values[0, 0], rtol=1e-6)


def test_bad_settings_and_inputs_are_refused_by_name(tmp_path):
    stim = _stimulus_store(tmp_path / "test.zarr")
    model = _save_model(_mouth_reader(), tmp_path / "model.pt")
    base = dict(methods=["epsilon_plus_flat"], samples=0, batch_size=8, patch=4, steps=4, fill="background",
                masking_methods=["epsilon_plus_flat"], seed=0)
    outs = {"out": tmp_path / "r.zarr", **{k: tmp_path / f"{k}.png" for k in ("figure", "masking_figure",
                                                                               "parts_figure")}}
    for bad, match in [({"methods": ["lrp_alpha"]}, "lrp_alpha"), ({"masking_methods": ["lrp0"]}, "not in"),
                       ({"fill": "noise"}, "relevance.fill"), ({"patch": 5}, "patch = 5 does not divide")]:
        with pytest.raises(RelevanceError, match=match):
            run(Spec(**{**base, **bad}), {"model": model, "stimuli": stim}, outs)
    other = _save_model(_mouth_reader(), tmp_path / "gender.pt", task="gender", classes=("female", "male"))
    with pytest.raises(RelevanceError, match="no `gender` coordinate"):
        run(Spec(**base), {"model": other, "stimuli": stim}, outs)
    with pytest.raises(RelevanceError, match=r"expression value\(s\) \['happiness'\] are not classes"):
        true_classes(np.asarray(["neutral", "happiness"]), ["neutral", "fear"], "expression", "set")
    assert not (tmp_path / "r.zarr").exists()
    np.testing.assert_allclose(np.diag(map_correlation([np.random.rand(3, 4, 4), np.random.rand(3, 4, 4)])), 1.0)
