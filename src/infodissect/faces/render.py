"""Batched rendering of faces from factor values: geometry, shading, rasterization.

``render(model, params, camera)`` is a pure function: the same parameters give the
same pixels, whatever else is in the batch. (The matrix products' rounding may depend
on the batch *size*, which can move a pixel between two nearly coincident triangles, so
the stimulus stage always renders batches of one fixed size.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .factors import ETHNICITIES, EXPRESSIONS
from .mesh import PART_NAMES
from .model import FaceModel
from .raster import Fragments, rasterize

CPU_SLICE = 64  # samples drawn at once on the CPU (see render)
PIVOT_Y = -0.25  # the camera looks at this height of the head (the middle of the face)


@dataclass(frozen=True)
class Camera:
    """Perspective camera and image format.

    ``detail`` is the skin-grid stride of the mesh level drawn (1 = every vertex);
    0 chooses it from the resolution (see :attr:`stride`).
    """

    resolution: int = 64
    antialias: int = 2
    fov_deg: float = 12.5
    distance: float = 11.0
    color: str = "rgb"
    detail: int = 0

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    @property
    def samples(self) -> int:
        """Side of the supersampled grid the rasterizer draws on."""
        return self.resolution * self.antialias

    @property
    def stride(self) -> int:
        """Skin-grid stride of the mesh level drawn: ``detail``, or (0) 2 up to 96 px, where
        the full mesh's triangles and texture detail are finer than a pixel, else 1."""
        if self.detail:
            return self.detail
        return 2 if self.resolution <= 96 else 1


PARAM_NAMES: tuple[str, ...] = (
    "shape_coeff", "texture_coeff", "gender", "gender_strength", "ethnicity", "age", "expression",
    "expression_intensity", "yaw", "pitch", "roll", "light_azimuth", "light_elevation", "light_ambient",
    "scale", "shift_x", "shift_y", "background",
)


def _coefficient_rows(model: FaceModel, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample coefficients on [basis; fixed] rows for geometry and albedo, and greying."""
    b = p["yaw"].shape[0]
    dt = model.vertices.dtype
    sign = (p["gender"].to(dt) * 2.0 - 1.0) * p["gender_strength"].to(dt)
    eth = F.one_hot(p["ethnicity"].long(), len(ETHNICITIES)).to(dt)
    age = p["age"].to(dt)
    age_lin = (age - 30.0) / 40.0
    wrinkles = ((age - 25.0) / 45.0).clamp(0.0, 1.0)
    grey = ((age - 40.0) / 35.0).clamp(0.0, 1.0)
    expr = F.one_hot(p["expression"].long(), len(EXPRESSIONS)).to(dt) * p["expression_intensity"].to(dt)[:, None]
    zeros = torch.zeros(b, 1, dtype=dt, device=age.device)
    geo = torch.cat([p["shape_coeff"].to(dt), sign[:, None], eth, age_lin[:, None], zeros, expr], 1)
    alb = torch.cat([p["texture_coeff"].to(dt), sign[:, None], eth, zeros, wrinkles[:, None],
                     torch.zeros_like(expr)], 1)
    return geo, alb, grey


def face_geometry(model: FaceModel, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space vertices (B, V, 3) and albedo (B, V, 3) in [0, 1] for each sample."""
    geo, alb, grey = _coefficient_rows(model, p)
    nv = model.n_vertices
    verts = torch.addmm(model.vertices.view(1, -1), geo, model.geometry_rows).view(-1, nv, 3)
    albedo = torch.addmm(model.base_albedo.view(1, -1), alb, model.albedo_rows).view(-1, nv, 3)
    hair = model.hair_index  # greying acts on the hair vertices only
    grey_hair = albedo.index_select(1, hair)
    grey_hair = grey_hair + (grey[:, None] * model.hair.index_select(0, hair))[..., None] * (0.62 - grey_hair)
    albedo.index_copy_(1, hair, grey_hair)
    return verts, albedo.clamp_(0.02, 1.0)


def vertex_normals(model: FaceModel, verts: torch.Tensor) -> torch.Tensor:
    """Unit normals (B, V, 3): central differences on the skin grid; eyeballs rigid."""
    rings, segs = model.template.grid_shape
    n_grid = rings * segs
    grid = verts[:, :n_grid].view(-1, rings, segs, 3)
    south, north = verts[:, n_grid : n_grid + 1], verts[:, n_grid + 1 : n_grid + 2]
    d_phi = torch.roll(grid, -1, 2) - torch.roll(grid, 1, 2)
    up = torch.cat([grid[:, 1:], north[:, None].expand(-1, 1, segs, 3)], 1)
    down = torch.cat([south[:, None].expand(-1, 1, segs, 3), grid[:, :-1]], 1)
    n = torch.linalg.cross(d_phi, up - down, dim=-1).reshape(-1, n_grid, 3)
    rest = model.normals_template[n_grid:].expand(verts.shape[0], -1, 3)
    n = torch.cat([n, rest], 1)
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _rotation(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (B, 3, 3): roll(z) @ pitch(x) @ yaw(y), angles in degrees."""
    a, b, c = (torch.deg2rad(t) for t in (yaw, pitch, roll))
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    ry = torch.stack([torch.cos(a), zero, torch.sin(a), zero, one, zero, -torch.sin(a), zero, torch.cos(a)], -1)
    rx = torch.stack([one, zero, zero, zero, torch.cos(b), -torch.sin(b), zero, torch.sin(b), torch.cos(b)], -1)
    rz = torch.stack([torch.cos(c), -torch.sin(c), zero, torch.sin(c), torch.cos(c), zero, zero, zero, one], -1)
    shape = (-1, 3, 3)
    return rz.view(shape) @ rx.view(shape).transpose(1, 2) @ ry.view(shape)


def _apply(r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Apply (B, 3, 3) rotations to (B, V, 3) points (three fused multiply-adds per row:
    a batched 3 x 3 matrix product is far slower on the CPU)."""
    x, y, z = v.unbind(-1)
    c = r[:, :, :, None]  # (B, 3, 3, 1): each entry broadcast over the vertices
    rows = [torch.addcmul(torch.addcmul(x * c[:, i, 0], y, c[:, i, 1]), z, c[:, i, 2]) for i in range(3)]
    return torch.stack(rows, -1)


def world_transform(p: dict[str, torch.Tensor], verts: torch.Tensor, normals: torch.Tensor, camera: Camera
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose, scale and translate model-space vertices and normals into camera space."""
    r = _rotation(p["yaw"], p["pitch"], p["roll"])
    centred = verts - verts.new_tensor([0.0, PIVOT_Y, 0.0])
    world = _apply(r, centred) * p["scale"][:, None, None]
    half = camera.distance * math.tan(math.radians(camera.fov_deg) / 2)
    shift = torch.stack([p["shift_x"] * 2 * half, p["shift_y"] * 2 * half, torch.zeros_like(p["shift_x"])], -1)
    return world + shift[:, None, :], _apply(r, normals)


def shade(world: torch.Tensor, normals: torch.Tensor, albedo: torch.Tensor, specular: torch.Tensor,
          p: dict[str, torch.Tensor], camera: Camera) -> torch.Tensor:
    """Lambertian plus Blinn-Phong (exponent 24) colour per vertex (B, V, 3), display-referred."""
    az, el = torch.deg2rad(p["light_azimuth"]), torch.deg2rad(p["light_elevation"])
    light = torch.stack([torch.sin(az) * torch.cos(el), torch.sin(el), torch.cos(az) * torch.cos(el)], -1)
    view = world.new_tensor([0.0, 0.0, camera.distance]) - world
    half = (view / view.norm(dim=-1, keepdim=True)).add_(light[:, None])  # unnormalised half vector
    diffuse = torch.bmm(normals, light[:, :, None]).squeeze(-1).clamp_(min=0.0)
    n_h = ((normals * half).sum(-1) / half.norm(dim=-1).clamp_(min=1e-12)).clamp_(min=0.0)
    n_h3 = n_h * n_h * n_h
    n_h24 = (n_h3 * n_h3).square_().square_()
    spec = n_h24.mul_(specular).mul_(diffuse > 0)
    amb = p["light_ambient"][:, None]
    lit = torch.addcmul(amb, 1.0 - amb, diffuse)  # ambient plus diffuse share of the light
    linear = torch.addcmul((spec * (1.0 - amb))[..., None], albedo.pow(2.2), lit[..., None])
    return linear.clamp_(min=0.0).pow_(1.0 / 2.2)


def project(world: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Camera-space points to sample-grid coordinates (x, y, inverse depth)."""
    size = camera.resolution * camera.antialias
    focal = 1.0 / math.tan(math.radians(camera.fov_deg) / 2)
    zc = camera.distance - world[..., 2]
    inv = 1.0 / zc
    sx = (world[..., 0] * focal * inv + 1.0) * 0.5 * size
    sy = (1.0 - world[..., 1] * focal * inv) * 0.5 * size
    w = ((inv - 1.0 / (camera.distance + 4.0)) / (1.0 / (camera.distance - 4.0) - 1.0 / (camera.distance + 4.0)))
    return torch.stack([sx, sy, w], -1)


def _mode_pool(labels: torch.Tensor, k: int, n_labels: int) -> torch.Tensor:
    """Most frequent label in each k x k block (ties: the larger label)."""
    if k == 1:
        return labels
    onehot = F.one_hot(labels.long(), n_labels).permute(0, 3, 1, 2).float()
    counts = F.avg_pool2d(onehot, k) + torch.arange(n_labels, device=labels.device).view(1, -1, 1, 1) * 1e-3
    return counts.argmax(1)


def render(model: FaceModel, p: dict[str, torch.Tensor], camera: Camera, backend: str = "auto"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a batch: images (B, H, W, C) uint8 and part labels (B, H, W) uint8.

    Draws the mesh level ``camera.stride`` of ``model`` (see :meth:`FaceModel.coarsened`).
    ``backend`` rasterizes and resolves the samples with ``"torch"`` (any device) or
    ``"numba"`` (CPU: the same arithmetic compiled per image, see :mod:`.raster_cpu`);
    ``"auto"`` takes numba on the CPU and torch elsewhere.
    On the CPU a batch is drawn in slices of :data:`CPU_SLICE` samples, whose vertex
    tensors stay in cache.
    """
    if backend not in ("auto", "torch", "numba"):
        raise ValueError(f"render backend must be 'auto', 'torch' or 'numba', not {backend!r}")
    n = p["yaw"].shape[0]
    if p["yaw"].device.type == "cpu" and n > CPU_SLICE:
        out = [_render({k: v[lo:lo + CPU_SLICE] for k, v in p.items()}, model, camera, backend)
               for lo in range(0, n, CPU_SLICE)]
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
    return _render(p, model, camera, backend)


def _render(p: dict[str, torch.Tensor], model: FaceModel, camera: Camera, backend: str
            ) -> tuple[torch.Tensor, torch.Tensor]:
    model = model.coarsened(camera.stride)
    verts, albedo = face_geometry(model, p)
    normals = vertex_normals(model, verts)
    world, normals = world_transform(p, verts, normals, camera)
    colour = shade(world, normals, albedo, model.specular, p, camera)
    screen = project(world, camera)
    if backend == "auto":
        backend = "numba" if colour.device.type == "cpu" else "torch"
    if backend == "numba":
        from .raster_cpu import render_samples

        img, parts = render_samples(screen, model.faces, colour, model.face_labels, p["background"],
                                    camera.resolution, camera.antialias, camera.color == "gray", len(PART_NAMES))
        return img.to(colour.device), parts.to(colour.device)
    return _resolve(model, rasterize(screen, model.faces, camera.samples, camera.samples), colour,
                    p["background"], camera)


def _resolve(model: FaceModel, frags: Fragments, colour: torch.Tensor, background: torch.Tensor, camera: Camera
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples to pixels: barycentric vertex colour (background where empty), grey, box
    filter over each ``antialias``-square block, and the block's most frequent part label."""
    hit = frags.face >= 0
    face = frags.face.clamp(min=0)
    bsz, nv = colour.shape[:2]
    offs = (torch.arange(bsz, device=colour.device) * nv).view(-1, 1, 1, 1)
    corners = (model.faces.index_select(0, face.reshape(-1)).view(*face.shape, 3) + offs).reshape(-1)
    cols = colour.reshape(-1, 3).index_select(0, corners).view(*face.shape, 3, 3)
    rgb = (frags.bary[..., None] * cols).sum(-2)
    rgb = torch.where(hit[..., None], rgb, background.to(rgb.dtype).view(-1, 1, 1, 1))
    if camera.color == "gray":
        rgb = (rgb * rgb.new_tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    img = rgb.permute(0, 3, 1, 2)
    if camera.antialias > 1:
        img = F.avg_pool2d(img, camera.antialias)
    img = (img.clamp(0.0, 1.0) * 255.0 + 0.5).floor().to(torch.uint8).permute(0, 2, 3, 1)
    labels = torch.where(hit, model.face_labels.index_select(0, face.reshape(-1)).view(face.shape).long(),
                         torch.zeros_like(face))
    parts = _mode_pool(labels, camera.antialias, len(PART_NAMES)).to(torch.uint8)
    return img.contiguous(), parts.contiguous()
