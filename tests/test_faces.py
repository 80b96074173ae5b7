"""The face model and renderer: mesh validity, bases, and each factor measured on renders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infodissect.faces.mesh import PART, PART_NAMES, build_template, orientation_ok
from infodissect.faces.model import build_face_model
from infodissect.faces.render import Camera, face_geometry, render

RINGS, SEGMENTS = 100, 128


@pytest.fixture(scope="module")
def model():
    return build_face_model(seed=0, shape_components=64, texture_components=64, texture_bands=5,
                            rings=RINGS, segments=SEGMENTS)


def params(model, n: int = 1, seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    """Neutral parameters for ``n`` faces of random identity, with overrides (scalars or sequences)."""
    g = torch.Generator().manual_seed(seed)
    p = {
        "shape_coeff": torch.randn(n, model.shape_basis.shape[0], generator=g),
        "texture_coeff": torch.randn(n, model.texture_basis.shape[0], generator=g),
        "gender": torch.zeros(n, dtype=torch.long), "gender_strength": torch.ones(n),
        "ethnicity": torch.zeros(n, dtype=torch.long), "age": torch.full((n,), 30.0),
        "expression": torch.zeros(n, dtype=torch.long), "expression_intensity": torch.ones(n),
        "yaw": torch.zeros(n), "pitch": torch.zeros(n), "roll": torch.zeros(n),
        "light_azimuth": torch.zeros(n), "light_elevation": torch.full((n,), 20.0),
        "light_ambient": torch.full((n,), 0.35), "scale": torch.ones(n), "shift_x": torch.zeros(n),
        "shift_y": torch.zeros(n), "background": torch.full((n,), 0.5),
    }
    for k, v in overrides.items():
        t = torch.as_tensor(v)
        p[k] = (t.expand(n) if t.ndim == 0 else t).to(p[k].dtype).clone()
    return p


CAM = Camera(resolution=96, antialias=1)


def test_template_is_closed_star_shaped_and_dense():
    t = build_template(RINGS, SEGMENTS)
    assert len(t.vertices) >= 10_000
    edges = np.sort(np.concatenate([t.faces[:, [0, 1]], t.faces[:, [1, 2]], t.faces[:, [2, 0]]]), 1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert set(counts.tolist()) == {2}, "every edge must be shared by exactly two faces (closed mesh)"
    skin_faces = t.faces[np.all(t.skin[t.faces], 1)]
    assert orientation_ok(t.vertices, skin_faces).all()
    assert set(np.unique(t.labels)) == set(range(1, len(PART_NAMES)))


def _closed(faces: np.ndarray) -> bool:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    return set(np.unique(edges, axis=0, return_counts=True)[1].tolist()) == {2}


@pytest.mark.parametrize("stride", [2, 4])
def test_coarser_mesh_levels_keep_the_face(model, stride):
    coarse = model.coarsened(stride)
    t = coarse.template
    assert coarse is model.coarsened(stride) and model.coarsened(1) is model
    def n_skin(tt):  # noqa: E306
        return int(np.all(tt.skin[tt.faces], 1).sum())
    assert _closed(t.faces) and n_skin(t) < n_skin(model.template) / (stride * stride - 0.5)
    assert orientation_ok(t.vertices, t.faces[np.all(t.skin[t.faces], 1)]).all()
    # The lips still part on a ring and the kept segments are mirror images.
    assert t.mouth_line.sum() >= 4
    rings, segs = t.grid_shape
    grid = t.vertices[: rings * segs].reshape(rings, segs, 3)
    np.testing.assert_allclose(grid[..., 0], -grid[:, ::-1, 0], atol=1e-9)
    # Every row of every basis is the full model's, at the kept vertices.
    full = model.shape_basis.view(model.shape_basis.shape[0], -1, 3)
    sub = coarse.shape_basis.view(coarse.shape_basis.shape[0], -1, 3)
    idx = [int(np.flatnonzero((model.template.vertices == v).all(1))[0]) for v in t.vertices[::97]]
    torch.testing.assert_close(sub[:, ::97], full[:, idx])


def test_coarse_level_renders_like_the_full_mesh_at_low_resolution(model):
    p = params(model, 4, yaw=[-30.0, 0.0, 20.0, 45.0], expression=[0, 1, 2, 5])
    full, full_parts = render(model, p, Camera(resolution=64, antialias=2, detail=1))
    coarse, coarse_parts = render(model, p, Camera(resolution=64, antialias=2))
    assert Camera(resolution=64, antialias=2).stride == 2 and Camera(resolution=224, antialias=2).stride == 1
    diff = (full.float() - coarse.float()).abs()
    assert diff.mean() < 3.0, f"mean absolute difference {diff.mean():.2f} grey levels"
    assert (full_parts == coarse_parts).float().mean() > 0.97


def test_bases_are_orthonormal_with_decaying_variance(model):
    for basis in (model.shape_basis.double(), model.texture_basis.double()):
        gram = basis @ basis.T
        assert torch.allclose(gram, torch.eye(len(gram), dtype=torch.float64), atol=1e-4)
    sig = model.shape_sigma.numpy()
    assert sig[0] > 4 * sig[-1] and np.mean(np.diff(sig) <= 1e-6) > 0.9
    tex = model.texture_sigma.numpy().reshape(5, -1)
    assert (np.diff(tex, axis=1) <= 0).all() and (np.diff(tex[:, 0]) < 0).all()
    named = {"nose_width", "lip_fullness", "eye_spacing", "jaw_width"}
    assert named <= set(model.shape_names)


def test_random_identities_with_expressions_have_no_self_intersecting_skin(model):
    """No skin face cuts through another, for random identities with expressions, ages, genders, ethnicities.

    Skin faces keep their orientation about the head centre almost everywhere (star-shaped,
    hence intersection-free by construction); a few faces on walls nearly parallel to the
    rays (mouth line, eyelid rims, nose sides) tip into overhangs for some identities, so
    the faces of the identities with the most tipped faces are tested pair by pair.
    """
    from infodissect.faces.mesh import self_intersections

    n = 200
    g = torch.Generator().manual_seed(1)
    p = params(model, n, seed=3, expression=torch.randint(0, 7, (n,), generator=g),
               age=torch.rand(n, generator=g) * 60 + 18, gender=torch.randint(0, 2, (n,), generator=g),
               ethnicity=torch.randint(0, 3, (n,), generator=g))
    verts, albedo = face_geometry(model, p)
    verts = verts.numpy().astype(np.float64)
    t = model.template
    skin_faces = t.faces[np.all(t.skin[t.faces], 1)]
    tipped = ~orientation_ok(verts, skin_faces)
    assert tipped.mean() < 2e-4 and tipped.mean(1).max() < 2e-3, f"{tipped.sum()} skin faces tipped"
    for i in np.argsort(-tipped.sum(1))[:4]:
        assert tipped[i].sum() > 0  # these are the identities that could intersect
        assert len(self_intersections(verts[i], skin_faces)) == 0, f"identity {i}: skin intersects itself"
    neutral = params(model, 50, seed=4)
    neutral["shape_coeff"][:] = 0
    v0, _ = face_geometry(model, neutral)
    assert orientation_ok(v0.numpy().astype(np.float64), skin_faces).all()
    assert 0.0 < float(albedo.min()) and float(albedo.max()) <= 1.0


def test_self_intersection_check_finds_faces_cutting_through(model):
    from infodissect.faces.mesh import self_intersections

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.2, -0.5], [0.3, 0.2, 0.5], [0.2, 0.3, 0.5]], float)
    assert self_intersections(v, np.array([[0, 1, 2], [3, 4, 5]])).tolist() == [[0, 1]]
    v[3:, 2] += 2.0
    assert len(self_intersections(v, np.array([[0, 1, 2], [3, 4, 5]]))) == 0
    t = model.template
    skin_faces = t.faces[np.all(t.skin[t.faces], 1)]
    pushed = t.vertices.copy()
    tip = int(np.argmax(pushed[:, 2] * t.skin))
    pushed[tip, 2] -= 3.0  # the nose tip pulled through the back of the head
    assert len(self_intersections(pushed, skin_faces)) > 0


def _centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([rows.mean(), cols.mean()])


def test_yaw_moves_nose_and_hides_far_eye(model):
    p = params(model, 4, yaw=[-40.0, 0.0, 40.0, 75.0])
    p["shape_coeff"][:] = p["shape_coeff"][0]
    p["texture_coeff"][:] = p["texture_coeff"][0]
    _, parts = render(model, p, CAM)
    parts = parts.numpy()
    nose_x = [_centroid(parts[i] == PART["nose"])[1] for i in range(3)]
    assert nose_x[0] < nose_x[1] - 5 < nose_x[2] - 10
    left, right = (parts == PART["left_eye"]).sum((1, 2)), (parts == PART["right_eye"]).sum((1, 2))
    assert left[1] > 10 and abs(int(left[1]) - int(right[1])) < 0.3 * left[1]
    # Turning to the viewer's right takes the subject's left eye behind the head.
    assert left[3] <= 0.05 * right[3] and right[3] > 10


def test_light_azimuth_moves_bright_side(model):
    p = params(model, 2, light_azimuth=[-60.0, 60.0], light_ambient=0.2)
    p["shape_coeff"][1], p["texture_coeff"][1] = p["shape_coeff"][0], p["texture_coeff"][0]
    img, parts = render(model, p, CAM)
    lum = img.float().mean(-1).numpy()
    face = (parts.numpy() == PART["skin"])
    mid = CAM.resolution // 2
    def side(i, right):  # noqa: E306
        m = face[i].copy()
        if right:
            m[:, :mid] = False
        else:
            m[:, mid:] = False
        return lum[i][m].mean()
    assert side(0, False) > side(0, True) + 15  # light from the viewer's left
    assert side(1, True) > side(1, False) + 15


def test_happiness_raises_mouth_corners(model):
    cam = Camera(resolution=160, antialias=1)
    p = params(model, 2, expression=[0, 1])
    p["shape_coeff"][:] = 0
    _, parts = render(model, p, cam)
    def corner_lift(lab):  # noqa: E306
        rows, cols = np.nonzero(lab == PART["mouth"])
        width = cols.max() - cols.min()
        corners = (cols <= cols.min() + 0.1 * width) | (cols >= cols.max() - 0.1 * width)
        return rows.mean() - rows[corners].mean()  # > 0: corners above the mouth's centre
    neutral, happy = corner_lift(parts[0].numpy()), corner_lift(parts[1].numpy())
    assert happy > neutral + 1.0


def test_age_raises_high_frequency_texture_energy(model):
    cam = Camera(resolution=128, antialias=1)
    p = params(model, 2, age=[20.0, 70.0], light_ambient=0.6)
    p["shape_coeff"][1], p["texture_coeff"][1] = p["shape_coeff"][0], p["texture_coeff"][0]
    img, parts = render(model, p, cam)
    lum = img.float().mean(-1)
    blur = torch.nn.functional.avg_pool2d(lum[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    high = (lum - blur) ** 2
    skin = torch.from_numpy(parts.numpy() == PART["skin"])
    eroded = torch.nn.functional.max_pool2d((~skin).float()[:, None], 5, stride=1, padding=2)[:, 0] == 0
    energy = [high[i][eroded[i]].mean().item() for i in range(2)]
    assert energy[1] > 1.5 * energy[0]


def test_identities_differ_more_than_a_small_light_change(model):
    p = params(model, 3, light_azimuth=[0.0, 5.0, 0.0])
    p["shape_coeff"][1], p["texture_coeff"][1] = p["shape_coeff"][0], p["texture_coeff"][0]
    img, _ = render(model, p, CAM)
    x = img.float()
    light = ((x[0] - x[1]) ** 2).mean()
    ident = ((x[0] - x[2]) ** 2).mean()
    assert ident > 3 * light


def test_grayscale_and_resolution(model):
    img, parts = render(model, params(model, 2), Camera(resolution=40, antialias=2, color="gray"))
    assert img.shape == (2, 40, 40, 1) and img.dtype == torch.uint8 and parts.shape == (2, 40, 40)


def test_antialiasing_softens_the_silhouette(model):
    p = params(model, 1, background=0.0)
    hard, _ = render(model, p, Camera(resolution=64, antialias=1))
    soft, _ = render(model, p, Camera(resolution=64, antialias=3))
    def levels(img):  # noqa: E306
        return len(torch.unique(img[0, :, :, 0]))
    assert levels(soft) > levels(hard)


@pytest.mark.parametrize("camera", [Camera(resolution=64, antialias=2), Camera(resolution=48, antialias=3, color="gray"),
                                    Camera(resolution=96, antialias=1, detail=1)])
def test_cpu_backend_draws_exactly_what_the_torch_rasterizer_draws(model, camera):
    """The compiled CPU rasterizer (numba) repeats the PyTorch one's arithmetic: same pixels, same labels."""
    g = torch.Generator().manual_seed(5)
    n = 6
    p = params(model, n, seed=6, yaw=torch.tensor([-70.0, -30.0, 0.0, 20.0, 50.0, 85.0]),
               pitch=torch.rand(n, generator=g) * 40 - 20, roll=torch.rand(n, generator=g) * 30 - 15,
               expression=torch.arange(n) % 7, shift_x=torch.rand(n, generator=g) * 0.6 - 0.3,
               scale=torch.rand(n, generator=g) * 0.6 + 0.8)
    fast, fast_parts = render(model, p, camera, backend="numba")
    slow, slow_parts = render(model, p, camera, backend="torch")
    assert fast.shape == slow.shape and fast.dtype == slow.dtype == torch.uint8
    assert torch.equal(fast, slow)
    assert torch.equal(fast_parts, slow_parts)
    assert (fast_parts > 0).float().mean() > 0.1  # something was drawn, partly off screen for the shifted ones


def test_fragments_of_both_backends_agree(model):
    from infodissect.faces.raster import rasterize
    from infodissect.faces.raster_cpu import fragments
    from infodissect.faces.render import face_geometry, project, vertex_normals, world_transform

    cam = Camera(resolution=32, antialias=2)
    p = params(model, 3, yaw=[-40.0, 0.0, 60.0])
    verts, _ = face_geometry(model, p)
    world, _ = world_transform(p, verts, vertex_normals(model, verts), cam)
    screen = project(world, cam)
    ref = rasterize(screen, model.faces, 64, 64)
    face, bary = fragments(screen, model.faces, 64, 64)
    assert torch.equal(face, ref.face) and torch.equal(bary, ref.bary)
    assert (face >= 0).any() and (face < 0).any()


def test_render_rejects_an_unknown_backend(model):
    with pytest.raises(ValueError, match="backend"):
        render(model, params(model, 1), Camera(resolution=16), backend="opengl")
