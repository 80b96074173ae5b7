"""Network dissection: exact streaming thresholds, sparse upsampled counts against a dense brute force,
planted units, the rotation and location baselines, receptive-field centres and the error paths."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from infodissect.analyses import dissection as D
from infodissect.config import ConfigError, validate_config
from infodissect.nets import build_model


def _top(values: np.ndarray, q: float) -> float:
    v = np.sort(values.ravel())[::-1]
    return float(v[D.top_rank(q, len(v))])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("bounded", [False, True])
def test_thresholds_are_exact_order_statistics_whatever_the_split(dtype, bounded):
    rng = np.random.default_rng(0)
    scale = np.asarray([1, 10, 0.01, 1, 1]).reshape(1, 5, 1, 1)
    x = torch.from_numpy(np.maximum(rng.standard_normal((300, 5, 6, 6)) * scale, -0.3)).to(dtype)
    x[:, 3] = 0  # a dead unit
    x[:, 4, :, :3] = -2.5  # ties and negatives
    quantiles = [0.005, 0.1, 0.5]
    results = []
    for batch in (37, 300):
        uq = D.UnitQuantiles(5, quantiles, dtype, total=300 * 36 if bounded else 0)
        order = list(range(0, 300, batch))[::-1]  # any order
        more = True
        while more:
            for a in order:
                uq.add(x[a:a + batch])
            more = uq.next_pass()
        results.append(uq.thresholds())
    assert torch.equal(results[0], results[1])
    for qi, q in enumerate(quantiles):
        for k in range(5):
            assert results[0][qi, k].item() == _top(x[:, k].float().numpy(), q), (q, k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("stem,size", [("large", 64), ("small", 48), ("large", 56)])
def test_sparse_counts_equal_the_dense_upsampled_masks(stem, size, dtype):
    """float16 maps are read as bit patterns and compared by key (thresholds not float16 values included),
    float32 maps as values; both equal the dense float64 upsampling, for dense maps and for single cells
    above the threshold inside and at every edge (only the squares around them are evaluated)."""
    rng = np.random.default_rng(1)
    for layer, g in D.layer_geometry(build_model(10, width=8, stem=stem)).items():
        cells = -(-size // g.stride)
        maps = torch.from_numpy(np.maximum(rng.standard_normal((4, 3, cells, cells)), 0).astype(np.float16)).to(dtype)
        maps[0, 0] = 0
        maps[0, 0, 0, 0] = maps[0, 0, -1, -1] = 1  # corner cells: the edge-held squares
        maps[1, 1] = maps[2, 2] = maps[3, 0] = 0
        maps[1, 1, cells // 2, cells // 2] = 3  # one interior cell
        maps[2, 2, 0, cells // 2] = maps[2, 2, cells // 2, -1] = 3  # one cell on the top and one on the right edge
        maps[3, 0, -1, 0] = 3  # the bottom-left corner
        assert maps.dtype == dtype
        labels = torch.from_numpy(rng.integers(0, 5, (4, size, size)))
        thresholds = torch.tensor([[0.5, 1.0, 2.5], [0.0, 0.0, 0.0], [0.3, 0.7, 1.0]])
        inter, area = D.count_batch(maps, thresholds, D.quads(g, (cells, cells), (size, size)), labels, 5)
        dense = D.upsample(maps.float().numpy(), (size, size), g)
        for qi in range(len(thresholds)):
            mask = dense > thresholds[qi].numpy()[None, :, None, None]
            assert np.array_equal(area[qi].numpy(), mask.sum((2, 3))), layer
            want = np.stack([[(mask[:, k] & (labels.numpy() == lab)).sum() for lab in range(5)] for k in range(3)])
            assert np.array_equal(inter[qi].numpy(), want), layer


def test_receptive_field_centres_match_the_gradient_of_an_interior_cell():
    torch.manual_seed(0)
    model = build_model(5, width=4, stem="large")
    for m in model.modules():  # positive weights, no batch-norm shifts: |gradient| is centred on the centre
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.constant_(m.weight, 0.01)
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    model.maxpool = torch.nn.AvgPool2d(3, 2, 1)  # same geometry; max-pool's gradient picks one position
    model.eval()
    from infodissect.nets import readout_modules

    geometry = D.layer_geometry(model)
    mods = readout_modules(model)
    for layer in ("relu_stem", "block1_out", "block2_relu1"):
        out = {}
        h = mods[layer].register_forward_hook(lambda m, i, o: out.__setitem__("x", o))
        x = torch.ones((1, 3, 96, 96), requires_grad=True)
        model(x)
        h.remove()
        cells = out["x"].shape[-1]
        i = cells // 2
        out["x"][0, :, i, i].sum().backward()
        grad = x.grad[0].abs().sum(0)
        ys, xs = np.nonzero(grad.numpy())
        g = geometry[layer]
        assert (ys.min() + ys.max()) / 2 == g.offset + g.stride * i, layer
        assert (xs.min() + xs.max()) / 2 == g.offset + g.stride * i, layer
        assert ys.max() - ys.min() + 1 == g.size


def _planted_set(n=24, size=32, seed=0):
    """Images with three rectangular parts at random places, and maps of a stride-4 layer: unit 0 the indicator
    of part 1 at the cell centres, unit 1 of part 2, unit 2 noise."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), dtype=np.int64)
    for b in range(n):
        for lab, (hgt, wid) in ((1, (8, 12)), (2, (6, 6)), (3, (10, 4))):
            y, x = rng.integers(0, size - hgt), rng.integers(0, size - wid)
            labels[b, y:y + hgt, x:x + wid] = lab
    g = D.Geometry(4, 0, 9)
    centres = np.arange(0, size, 4)
    at_centres = labels[:, centres][:, :, centres]
    maps = np.stack([at_centres == 1, at_centres == 2, rng.random(at_centres.shape) < 0.05], 1).astype(np.float16)
    return labels, maps, g


def _dissect(labels, maps, g, batch, workers, quantiles):
    n = len(labels)

    def batches():
        for a in range(0, n, batch):
            yield a, {"layer": torch.from_numpy(maps[a:a + batch])}

    return D.dissect_network(batches, {"layer": g}, labels.shape[1:], lambda a, b: torch.from_numpy(labels[a:b]),
                             lambda a, b: torch.zeros((b - a, 0), dtype=torch.float64), quantiles, torch.float16,
                             n_labels=4, n_samples=n, top=3, workers=workers)["layer"]


def test_planted_units_get_their_part_with_the_brute_force_iou_whatever_the_batches_and_workers():
    labels, maps, g = _planted_set()
    quantiles = [0.2, 0.5]
    runs = [_dissect(labels, maps, g, batch, workers, quantiles) for batch, workers in ((5, 1), (24, 1), (7, 3))]
    for other in runs[1:]:
        for field in ("thresholds", "labels", "image", "area", "top_value", "top_sample"):
            assert torch.equal(getattr(runs[0], field), getattr(other, field)), field
    concepts = D.concept_table(["background", "a", "b", "c"], {"a_or_b": ["a", "b"]}, [], {})
    areas = D.concept_areas(np.bincount(labels.ravel(), minlength=4), np.zeros(0), 32 * 32, concepts)
    ds = D.layer_result("layer", runs[0], concepts, areas, quantiles, np.arange(3), 0.04, g, (8, 8))
    dense = D.upsample(maps.astype(np.float64), (32, 32), g)
    for qi, q in enumerate(quantiles):
        for unit, part in ((0, "a"), (1, "b")):
            assert ds["label"].values[qi, unit] == part
            t = _top(maps[:, unit].astype(np.float64), q)
            mask = dense[:, unit] > t
            truth = labels == concepts.names.index(part)
            brute = (mask & truth).sum() / (mask | truth).sum()
            assert abs(float(ds["label_iou"].values[qi, unit]) - brute) < 1e-6
            assert 0.3 < brute < 1
            union = (mask & (labels >= 1) & (labels <= 2)).sum() / (mask | ((labels >= 1) & (labels <= 2))).sum()
            assert abs(float(ds["iou"].sel(concept="a_or_b").values[qi, unit]) - union) < 1e-6
    assert ds["detector"].values[0, :2].all()
    # The top images of unit 0 are the images where part a is largest at the cell centres.
    assert (maps[ds["top_sample"].values[:, 0], 0].max((1, 2)) == 1).all()


def test_rotation_by_the_identity_reproduces_the_unrotated_counts_exactly():
    labels, maps, g = _planted_set(seed=3)
    n = len(labels)

    def source():
        for a in range(0, n, 8):
            yield a, {"layer": torch.from_numpy(maps[a:a + 8])}

    kwargs = dict(size=(32, 32), parts=lambda a, b: torch.from_numpy(labels[a:b]),
                  image_onehot=lambda a, b: torch.zeros((b - a, 0), dtype=torch.float64), quantiles=[0.2, 0.005],
                  n_labels=4, n_samples=n)
    plain = D.dissect_network(source, {"layer": g}, dtype=torch.float16, **kwargs)["layer"]
    full = D.random_rotation(3, seed=0)
    same = D.rotation(full, 0.0)
    assert np.array_equal(same, np.eye(3))
    rotated = D.dissect_network(D._rotated_batches(source, "layer", same), {"layer": g}, dtype=torch.float32,
                                **kwargs)["layer"]
    for field in ("thresholds", "labels", "area", "top_value", "top_sample"):
        assert torch.equal(getattr(plain, field), getattr(rotated, field)), field
    moved = D.dissect_network(D._rotated_batches(source, "layer", full), {"layer": g}, dtype=torch.float32,
                              **kwargs)["layer"]
    assert not torch.equal(plain.labels, moved.labels)


def test_fractional_rotations_run_from_the_identity_to_the_full_rotation():
    full = D.random_rotation(6, seed=1)
    assert np.allclose(full @ full.T, np.eye(6)) and np.isclose(np.linalg.det(full), 1)
    half = D.rotation(full, 0.5)
    assert np.allclose(half @ half.T, np.eye(6), atol=1e-10)
    assert np.allclose(half @ half, full, atol=1e-8)
    assert np.array_equal(D.rotation(full, 1.0), full)


def test_location_only_unit_iou_against_a_brute_force():
    labels, _, _ = _planted_set(seed=5)
    n, size = labels.shape[0], labels.shape[1]
    concepts = D.concept_table(["background", "a", "b", "c"], {}, [], {})
    counts = np.stack([(labels == lab).sum(0).ravel() for lab in range(4)])
    out = D.location_iou(counts, n, concepts, [0.05])
    freq = (labels == 1).sum(0).astype(float)
    t = np.sort(freq.ravel())[::-1][D.top_rank(0.05, size * size)]
    mask = np.broadcast_to(freq > t, labels.shape)
    truth = labels == 1
    assert abs(out[0, 1] - (mask & truth).sum() / (mask | truth).sum()) < 1e-12


def test_bad_concepts_and_nan_are_refused_by_name():
    with pytest.raises(D.DissectionError, match="dissection.concepts.eyes: unknown part"):
        D.concept_table(["background", "left_eye"], {"eyes": ["left_eye", "right_eye"]}, [], {})
    with pytest.raises(D.DissectionError, match="image_factors: 'gender'"):
        D.concept_table(["background"], {}, ["gender"], {})
    for nan in (np.nan, -np.nan):  # either sign bit (the kernel sees float16 bit patterns)
        labels, maps, g = _planted_set()
        maps[3, 1, 2, 2] = nan
        with pytest.raises(D.DissectionError, match="layer layer holds NaN"):
            _dissect(labels, maps, g, 8, 1, [0.1])


def test_config_checks_dissection_settings():
    raw = yaml.safe_load((Path(__file__).parents[1] / "config" / "test.yaml").read_text())
    for patch, message in (({"layers": ["pool"]}, "dissection.layers[0]: 'pool'"),
                           ({"rotation_layer": "block9"}, "dissection.rotation_layer: 'block9'"),
                           ({"image_factors": ["yaw"]}, "dissection.image_factors[0]: 'yaw'"),
                           ({"sets": ["sweeps"]}, "dissection.sets[0]: 'sweeps'")):
        cfg = {**raw, "dissection": {**raw.get("dissection", {}), **patch}}
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_config(cfg)


def test_thresholds_refuse_passes_that_saw_different_data():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal((40, 3, 4, 4)).astype(np.float32))
    uq = D.UnitQuantiles(3, [0.05], torch.float32, total=40 * 16)
    uq.add(x)
    assert uq.next_pass()
    uq.add(x * 2)  # a second pass whose maps are not those of the first
    with pytest.raises(D.DissectionError, match="second pass"):
        uq.thresholds()
    short = D.UnitQuantiles(3, [0.05], torch.float16, total=40 * 16)
    short.add(x[:20].half())  # half the set
    assert not short.next_pass()
    with pytest.raises(D.DissectionError, match="expected"):
        short.thresholds()
