"""The GPU backend of the rasterizer and resolve: :func:`.raster.rasterize` and :func:`.render._resolve`
as two fused Triton kernels.

Eager PyTorch materialises a tensor per arithmetic step for every (triangle, sample) candidate:
at 224 px a face has about 1.2 million candidates, so the PyTorch path moves gigabytes per
batch and rendered about 3,000 images/s on an H200. Here

* :func:`_zbuffer_kernel` gives each lane one (image, triangle): it culls, sets up the edge and
  depth planes, walks the triangle's box of sample centres and keeps the nearest with a 64-bit
  ``atomic_min`` on the keys of :mod:`.raster` (quantised ``1 - w`` above the face index, so the
  winner does not depend on the order of the atomics), skipping the atomic where a plain read
  already shows a nearer key;
* :func:`_resolve_kernel` gives each lane one output pixel: its ``k x k`` samples' barycentric
  colours (recomputed from the winning face's corners), the box filter, and the most frequent
  part label (ties to the larger).

The arithmetic is that of :mod:`.raster` and :mod:`.render`, step for step, in float32, with
floating-point contraction off (no fused multiply-add) and correctly rounded division, so on
the same vertex-stage output it gives the same pixels as the other two backends (tested under
Triton's interpreter on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .raster import _DEPTH_BITS, _EMPTY, _INDEX_BITS

_FACES_PER_PROGRAM = 128
_PIXELS_PER_PROGRAM = 128
# Compiler options of every launch: no fused multiply-add, so each product is rounded as in the other backends.
OPTIONS = {"enable_fp_fusion": False}
# The keys of :mod:`.raster` reach the kernels as compile-time constants: this depth scale (float32, so 2**38),
# _INDEX_BITS and _EMPTY.
_DEPTH_SCALE = float(np.float32((1 << _DEPTH_BITS) - 1))


@triton.jit
def _zbuffer_kernel(screen, faces, zbuf, n_faces, n_verts, height, width, DEPTH_SCALE: tl.constexpr,
                    INDEX_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """``zbuf`` (B*H*W,) int64, filled with the empty key: the nearest front face's key at every sample
    centre of image ``program_id(1)``, whose vertices are ``screen`` (B, V, 3)."""
    b = tl.program_id(1).to(tl.int64)
    f = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = f < n_faces
    v0 = tl.load(faces + 3 * f, mask=live, other=0)
    v1 = tl.load(faces + 3 * f + 1, mask=live, other=0)
    v2 = tl.load(faces + 3 * f + 2, mask=live, other=0)
    base = screen + b * n_verts * 3
    x0 = tl.load(base + 3 * v0, mask=live, other=0.0)
    y0 = tl.load(base + 3 * v0 + 1, mask=live, other=0.0)
    w0 = tl.load(base + 3 * v0 + 2, mask=live, other=0.0)
    x1 = tl.load(base + 3 * v1, mask=live, other=0.0)
    y1 = tl.load(base + 3 * v1 + 1, mask=live, other=0.0)
    w1 = tl.load(base + 3 * v1 + 2, mask=live, other=0.0)
    x2 = tl.load(base + 3 * v2, mask=live, other=0.0)
    y2 = tl.load(base + 3 * v2 + 1, mask=live, other=0.0)
    w2 = tl.load(base + 3 * v2 + 2, mask=live, other=0.0)
    fw = width.to(tl.float32)
    fh = height.to(tl.float32)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    xmin = tl.minimum(x0, tl.minimum(x1, x2))
    xmax = tl.maximum(x0, tl.maximum(x1, x2))
    ymin = tl.minimum(y0, tl.minimum(y1, y2))
    ymax = tl.maximum(y0, tl.maximum(y1, y2))
    keep = live & (area < 0.0) & (xmax > 0.0) & (xmin < fw) & (ymax > 0.0) & (ymin < fh)
    px0 = tl.minimum(tl.maximum(tl.ceil(xmin - 0.5), 0.0), fw).to(tl.int32)
    px1 = tl.minimum(tl.maximum(tl.floor(xmax - 0.5), -1.0), fw - 1.0).to(tl.int32)
    py0 = tl.minimum(tl.maximum(tl.ceil(ymin - 0.5), 0.0), fh).to(tl.int32)
    py1 = tl.minimum(tl.maximum(tl.floor(ymax - 0.5), -1.0), fh - 1.0).to(tl.int32)
    wx = tl.maximum(px1 - px0 + 1, 0)
    count = tl.where(keep, wx * tl.maximum(py1 - py0 + 1, 0), 0)
    wx = tl.maximum(wx, 1)
    inv = tl.math.div_rn(tl.full([BLOCK], 1.0, tl.float32), tl.where(keep, area, -1.0))
    a0, a1, a2 = (y1 - y2) * inv, (y2 - y0) * inv, (y0 - y1) * inv
    b0, b1, b2 = (x2 - x1) * inv, (x0 - x2) * inv, (x1 - x0) * inv
    c0, c1, c2 = (x1 * y2 - x2 * y1) * inv, (x2 * y0 - x0 * y2) * inv, (x0 * y1 - x1 * y0) * inv
    da = a0 * w0 + a1 * w1 + a2 * w2
    db = b0 * w0 + b1 * w1 + b2 * w2
    dc = c0 * w0 + c1 * w1 + c2 * w2
    low = f.to(tl.int64)
    image = b * height * width
    steps = tl.max(count, axis=0)
    j = steps * 0  # (a tensor from the start: a loop-carried value keeps its type)
    while j < steps:  # every lane walks its box, one sample centre a step
        px = px0 + j % wx
        py = py0 + j // wx
        cx = px.to(tl.float32) + 0.5
        cy = py.to(tl.float32) + 0.5
        inside = ((a0 * cx + b0 * cy + c0 >= -1e-5) & (a1 * cx + b1 * cy + c1 >= -1e-5)
                  & (a2 * cx + b2 * cy + c2 >= -1e-5) & (j < count))
        wz = tl.minimum(tl.maximum(da * cx + db * cy + dc, 0.0), 1.0)
        key = ((1.0 - wz) * DEPTH_SCALE).to(tl.int64) << INDEX_BITS | low
        at = zbuf + image + py.to(tl.int64) * width + px
        cur = tl.load(at, mask=inside, other=0)
        tl.atomic_min(at, key, mask=inside & (key < cur), sem="relaxed")
        j += 1


@triton.jit
def _resolve_kernel(zbuf, screen, colour, faces, face_labels, background, img, parts, n_pixels, n_verts, res,
                    K: tl.constexpr, KK: tl.constexpr, GRAY: tl.constexpr, CHANNELS: tl.constexpr,
                    INDEX_BITS: tl.constexpr, EMPTY: tl.constexpr, BLOCK: tl.constexpr):
    """Pixels ``img`` (B, R, R, C) uint8 and ``parts`` (B, R, R) uint8 from the z-buffer (B, R*K, R*K) of
    :func:`_zbuffer_kernel`: each lane one pixel; ``KK`` is K*K rounded up to a power of two."""
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = p < n_pixels
    b = p // (res * res)
    oy = (p // res) % res
    ox = p % res
    side = res * K
    bg = tl.load(background + b, mask=live, other=0.0)
    vbase = b * n_verts * 3
    acc0 = tl.zeros([BLOCK], tl.float32)
    acc1 = tl.zeros([BLOCK], tl.float32)
    acc2 = tl.zeros([BLOCK], tl.float32)
    for i in tl.static_range(K * K):  # the block's samples in row order, summed in that order
        sy = oy * K + i // K
        sx = ox * K + i % K
        key = tl.load(zbuf + (b * side + sy) * side + sx, mask=live, other=-1)
        hit = live & (key != -1) & (key != EMPTY)
        f = tl.where(hit, key & ((1 << INDEX_BITS) - 1), 0)
        v0 = tl.load(faces + 3 * f, mask=hit, other=0)
        v1 = tl.load(faces + 3 * f + 1, mask=hit, other=0)
        v2 = tl.load(faces + 3 * f + 2, mask=hit, other=0)
        x0 = tl.load(screen + vbase + 3 * v0, mask=hit, other=0.0)
        y0 = tl.load(screen + vbase + 3 * v0 + 1, mask=hit, other=0.0)
        x1 = tl.load(screen + vbase + 3 * v1, mask=hit, other=1.0)
        y1 = tl.load(screen + vbase + 3 * v1 + 1, mask=hit, other=0.0)
        x2 = tl.load(screen + vbase + 3 * v2, mask=hit, other=0.0)
        y2 = tl.load(screen + vbase + 3 * v2 + 1, mask=hit, other=1.0)
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        inv = tl.math.div_rn(tl.full([BLOCK], 1.0, tl.float32), area)
        cx = sx.to(tl.float32) + 0.5
        cy = sy.to(tl.float32) + 0.5
        l0 = tl.maximum((y1 - y2) * inv * cx + (x2 - x1) * inv * cy + (x1 * y2 - x2 * y1) * inv, 0.0)
        l1 = tl.maximum((y2 - y0) * inv * cx + (x0 - x2) * inv * cy + (x2 * y0 - x0 * y2) * inv, 0.0)
        l2 = tl.maximum((y0 - y1) * inv * cx + (x1 - x0) * inv * cy + (x0 * y1 - x1 * y0) * inv, 0.0)
        norm = tl.math.div_rn(tl.full([BLOCK], 1.0, tl.float32), tl.maximum(l0 + l1 + l2, 1e-12))
        l0, l1, l2 = l0 * norm, l1 * norm, l2 * norm
        r = (l0 * tl.load(colour + vbase + 3 * v0, mask=hit, other=0.0)
             + l1 * tl.load(colour + vbase + 3 * v1, mask=hit, other=0.0)
             + l2 * tl.load(colour + vbase + 3 * v2, mask=hit, other=0.0))
        g = (l0 * tl.load(colour + vbase + 3 * v0 + 1, mask=hit, other=0.0)
             + l1 * tl.load(colour + vbase + 3 * v1 + 1, mask=hit, other=0.0)
             + l2 * tl.load(colour + vbase + 3 * v2 + 1, mask=hit, other=0.0))
        bl = (l0 * tl.load(colour + vbase + 3 * v0 + 2, mask=hit, other=0.0)
              + l1 * tl.load(colour + vbase + 3 * v1 + 2, mask=hit, other=0.0)
              + l2 * tl.load(colour + vbase + 3 * v2 + 2, mask=hit, other=0.0))
        r = tl.where(hit, r, bg)
        g = tl.where(hit, g, bg)
        bl = tl.where(hit, bl, bg)
        if GRAY:
            acc0 += r * 0.299 + g * 0.587 + bl * 0.114
        else:  # (0 + x is x: the sums are those of the other backends)
            acc0 += r
            acc1 += g
            acc2 += bl
    norm_k = tl.full([BLOCK], K * K, tl.float32)
    out = img + p * CHANNELS
    tl.store(out, tl.floor(tl.minimum(tl.maximum(tl.math.div_rn(acc0, norm_k), 0.0), 1.0) * 255.0 + 0.5)
             .to(tl.uint8), mask=live)
    if CHANNELS == 3:
        tl.store(out + 1, tl.floor(tl.minimum(tl.maximum(tl.math.div_rn(acc1, norm_k), 0.0), 1.0) * 255.0 + 0.5)
                 .to(tl.uint8), mask=live)
        tl.store(out + 2, tl.floor(tl.minimum(tl.maximum(tl.math.div_rn(acc2, norm_k), 0.0), 1.0) * 255.0 + 0.5)
                 .to(tl.uint8), mask=live)
    # The part label: the most frequent of the block's samples' labels (empty: 0), ties to the larger.
    s = tl.arange(0, KK)
    used = s < K * K
    sy2 = oy[:, None] * K + s[None, :] // K
    sx2 = ox[:, None] * K + s[None, :] % K
    where = live[:, None] & used[None, :]
    keys = tl.load(zbuf + (b[:, None] * side + sy2) * side + sx2, mask=where, other=EMPTY)
    hit2 = where & (keys != EMPTY)
    lab = tl.load(face_labels + (keys & ((1 << INDEX_BITS) - 1)), mask=hit2, other=0).to(tl.int32)
    lab = tl.where(used[None, :], lab, -1)
    same = (lab[:, :, None] == lab[:, None, :]) & used[None, None, :]
    score = tl.where(used[None, :], tl.sum(same.to(tl.int32), axis=2) * 512 + lab, -1)
    best = tl.max(score, axis=1) % 512
    tl.store(parts + p, best.to(tl.uint8), mask=live)


def rasterize_resolve(screen: torch.Tensor, colour: torch.Tensor, faces: torch.Tensor, face_labels: torch.Tensor,
                      background: torch.Tensor, resolution: int, antialias: int, gray: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, R, R, C) uint8 and part labels (B, R, R) uint8 from the vertex stage's ``screen`` and ``colour``
    (B, V, 3) float32 (as :func:`.render.shade_and_project` gives them), as :func:`.raster.rasterize` and
    :func:`.render._resolve` compute them."""
    if faces.shape[0] >= 1 << _INDEX_BITS:
        raise ValueError(f"the rasterizer keys hold {_INDEX_BITS}-bit face indices: {faces.shape[0]} faces do not fit")
    bsz, nv, _ = screen.shape
    side = resolution * antialias
    screen = screen.to(torch.float32).contiguous()
    colour = colour.to(torch.float32).contiguous()
    faces = faces.to(device=screen.device, dtype=torch.int32).contiguous()
    labels = face_labels.to(device=screen.device, dtype=torch.uint8).contiguous()
    zbuf = torch.full((bsz * side * side,), _EMPTY, dtype=torch.int64, device=screen.device)
    nf = faces.shape[0]
    if bsz and nf:
        _zbuffer_kernel[(triton.cdiv(nf, _FACES_PER_PROGRAM), bsz)](
            screen, faces, zbuf, nf, nv, side, side, DEPTH_SCALE=_DEPTH_SCALE, INDEX_BITS=_INDEX_BITS,
            BLOCK=_FACES_PER_PROGRAM, **OPTIONS)
    channels = 1 if gray else 3
    img = torch.empty((bsz, resolution, resolution, channels), dtype=torch.uint8, device=screen.device)
    parts = torch.empty((bsz, resolution, resolution), dtype=torch.uint8, device=screen.device)
    n_pixels = bsz * resolution * resolution
    if n_pixels:
        block = _PIXELS_PER_PROGRAM if antialias <= 2 else 32  # the label mode holds block x KK x KK values
        _resolve_kernel[(triton.cdiv(n_pixels, block),)](
            zbuf, screen, colour, faces, labels, background.to(torch.float32).contiguous(), img, parts, n_pixels, nv,
            resolution, K=antialias, KK=triton.next_power_of_2(antialias * antialias), GRAY=gray, CHANNELS=channels,
            INDEX_BITS=_INDEX_BITS, EMPTY=_EMPTY, BLOCK=block, **OPTIONS)
    return img, parts
