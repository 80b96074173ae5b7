"""A batched z-buffer triangle rasterizer in PyTorch (the same code on CPU and CUDA).

Every front-facing triangle tests the sample centres inside its bounding box; the
nearest surface per sample wins an ``amin`` over 64-bit keys that pack quantised
inverse depth (high bits) above the triangle's index (low bits), so ties resolve
deterministically and the result does not depend on evaluation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Keys: quantised 1 - w (w clamped to [0, 1]) above the triangle index. float32(2**38 - 1) is 2**38,
# so the quantisation is exact (1 - w is a multiple of 2**-24) and keys order as (1 - w, index)
# pairs; 38 + 24 bits leave the sign bit clear even at w = 0 (39 bits overflowed there).
_DEPTH_BITS = 38
_INDEX_BITS = 24
_EMPTY = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class Fragments:
    """Per-sample rasterization result.

    ``face`` (B, H, W) int64 index of the visible face (-1 = background);
    ``bary`` (B, H, W, 3) barycentric weights of the sample in that face.
    """

    face: torch.Tensor
    bary: torch.Tensor


def _edge_coefficients(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentric coordinates as affine functions of the sample position.

    For triangles with vertex coordinates ``x, y`` (N, 3) returns ``(coef, area)``
    where ``coef`` (N, 3, 3) holds ``a, b, c`` with ``lambda_k = a_k px + b_k py + c_k``.
    """
    x0, x1, x2 = x.unbind(-1)
    y0, y1, y2 = y.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    a = torch.stack([y1 - y2, y2 - y0, y0 - y1], -1)
    b = torch.stack([x2 - x1, x0 - x2, x1 - x0], -1)
    c = torch.stack([x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0], -1)
    return torch.stack([a, b, c], -1) * (1.0 / area)[:, None, None], area


def rasterize(
    screen: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    max_faces_per_chunk: int = 1 << 21,
) -> Fragments:
    """Rasterize a batch of meshes that share their faces.

    ``screen`` (B, V, 3): sample-grid x (columns, 0..width), y (rows, 0..height,
    downward) and inverse depth ``w`` in (0, 1] (larger = nearer). Faces (F, 3)
    are counter-clockwise when seen from outside in a y-up frame, hence clockwise
    on screen; back faces are culled.
    """
    bsz, nv, _ = screen.shape
    device = screen.device
    nf = faces.shape[0]
    tri = screen.index_select(1, faces.reshape(-1)).view(bsz, nf, 3, 3)
    x, y, w = tri.unbind(-1)
    area = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0])
    xmin, xmax = x.amin(-1), x.amax(-1)
    ymin, ymax = y.amin(-1), y.amax(-1)
    keep = (area < 0) & (xmax > 0) & (xmin < width) & (ymax > 0) & (ymin < height)
    bi, fi = keep.nonzero(as_tuple=True)
    zbuf = torch.full((bsz * height * width,), _EMPTY, dtype=torch.int64, device=device)
    coef_all = []
    start = 0
    # Chunks keep the triangle index below 2**_INDEX_BITS and memory bounded.
    chunk = min(max_faces_per_chunk, 1 << _INDEX_BITS)
    for lo in range(0, bi.numel(), chunk):
        b, f = bi[lo : lo + chunk], fi[lo : lo + chunk]
        tx, ty, tw = x[b, f], y[b, f], w[b, f]
        coef, _ = _edge_coefficients(tx, ty)
        depth = (coef * tw[:, :, None]).sum(1)  # (N, 3): w = a px + b py + c
        x0 = torch.ceil(tx.amin(-1) - 0.5).clamp(0, width)
        x1 = torch.floor(tx.amax(-1) - 0.5).clamp(-1, width - 1)
        y0 = torch.ceil(ty.amin(-1) - 0.5).clamp(0, height)
        y1 = torch.floor(ty.amax(-1) - 0.5).clamp(-1, height - 1)
        wx = (x1 - x0 + 1).clamp(min=0).long()
        wy = (y1 - y0 + 1).clamp(min=0).long()
        count = wx * wy
        t = torch.repeat_interleave(torch.arange(count.numel(), device=device), count)
        offset = torch.arange(t.numel(), device=device) - (torch.cumsum(count, 0) - count)[t]
        wxt = wx[t]
        cx = x0[t] + torch.remainder(offset, wxt) + 0.5
        cy = y0[t] + torch.div(offset, wxt, rounding_mode="floor") + 0.5
        ct = coef[t]
        lam = ct[:, :, 0] * cx[:, None] + ct[:, :, 1] * cy[:, None] + ct[:, :, 2]
        inside = (lam >= -1e-5).all(-1)
        d = depth[t]
        wz = (d[:, 0] * cx + d[:, 1] * cy + d[:, 2]).clamp(0.0, 1.0)
        key = ((1.0 - wz) * float((1 << _DEPTH_BITS) - 1)).long() << _INDEX_BITS
        key = key | (t + start)
        pix = (b[t] * height + cy.long()) * width + cx.long()
        zbuf.scatter_reduce_(0, pix[inside], key[inside], "amin")
        coef_all.append(coef)
        start += b.numel()
    hit = zbuf != _EMPTY
    k = torch.where(hit, zbuf & ((1 << _INDEX_BITS) - 1), torch.zeros_like(zbuf))
    face = torch.where(hit, fi[k] if fi.numel() else k, torch.full_like(k, -1))
    if coef_all:
        coef = torch.cat(coef_all)[k]
        pix = torch.arange(zbuf.numel(), device=device)
        cx = (pix % width).to(screen.dtype) + 0.5
        cy = ((pix // width) % height).to(screen.dtype) + 0.5
        lam = coef[:, :, 0] * cx[:, None] + coef[:, :, 1] * cy[:, None] + coef[:, :, 2]
        lam = lam.clamp(min=0.0)
        lam = lam * (1.0 / lam.sum(-1, keepdim=True).clamp(min=1e-12))
        lam = torch.where(hit[:, None], lam, torch.zeros_like(lam))
    else:
        lam = torch.zeros(zbuf.numel(), 3, device=device, dtype=screen.dtype)
    return Fragments(face=face.view(bsz, height, width), bary=lam.view(bsz, height, width, 3))
