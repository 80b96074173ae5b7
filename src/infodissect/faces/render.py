"""Batched rendering of faces from factor values: geometry, shading, rasterization.

``render(model, params, camera)`` is a pure function: the same parameters give the
same pixels, whatever else is in the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .factors import ETHNICITIES, EXPRESSIONS
from .mesh import PART_NAMES
from .model import FaceModel
from .raster import rasterize

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
    verts = model.vertices + (geo @ model.geometry_rows).view(-1, nv, 3)
    albedo = model.base_albedo + (alb @ model.albedo_rows).view(-1, nv, 3)
    albedo = albedo + (grey[:, None] * model.hair)[..., None] * (0.62 - albedo)
    return verts, albedo.clamp(0.02, 1.0)


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
    """Apply (B, 3, 3) rotations to (B, V, 3) points."""
    return torch.bmm(v, r.transpose(1, 2))


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
    """Lambertian plus Blinn-Phong colour per vertex (B, V, 3), display-referred."""
    az, el = torch.deg2rad(p["light_azimuth"]), torch.deg2rad(p["light_elevation"])
    light = torch.stack([torch.sin(az) * torch.cos(el), torch.sin(el), torch.cos(az) * torch.cos(el)], -1)[:, None]
    view = world.new_tensor([0.0, 0.0, camera.distance]) - world
    view = view / view.norm(dim=-1, keepdim=True)
    half = light + view
    half = half / half.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    diffuse = (normals * light).sum(-1).clamp(min=0.0)
    spec = (normals * half).sum(-1).clamp(min=0.0).pow(24.0) * specular * (diffuse > 0)
    amb = p["light_ambient"][:, None]
    linear = albedo.pow(2.2) * (amb + (1.0 - amb) * diffuse)[..., None] + ((1.0 - amb) * spec)[..., None]
    return linear.clamp(min=0.0).pow(1.0 / 2.2)


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


def render(model: FaceModel, p: dict[str, torch.Tensor], camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a batch: images (B, H, W, C) uint8 and part labels (B, H, W) uint8.

    Draws the mesh level ``camera.stride`` of ``model`` (see :meth:`FaceModel.coarsened`).
    """
    model = model.coarsened(camera.stride)
    verts, albedo = face_geometry(model, p)
    normals = vertex_normals(model, verts)
    world, normals = world_transform(p, verts, normals, camera)
    colour = shade(world, normals, albedo, model.specular, p, camera)
    size = camera.samples
    frags = rasterize(project(world, camera), model.faces, size, size)
    hit = frags.face >= 0
    face = frags.face.clamp(min=0)
    bsz, nv = colour.shape[:2]
    offs = (torch.arange(bsz, device=colour.device) * nv).view(-1, 1, 1, 1)
    corners = (model.faces.index_select(0, face.reshape(-1)).view(*face.shape, 3) + offs).reshape(-1)
    cols = colour.reshape(-1, 3).index_select(0, corners).view(*face.shape, 3, 3)
    rgb = (frags.bary[..., None] * cols).sum(-2)
    rgb = torch.where(hit[..., None], rgb, p["background"].to(rgb.dtype).view(-1, 1, 1, 1))
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
