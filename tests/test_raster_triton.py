"""The GPU backend of the renderer (faces/raster_triton.py: the fused Triton z-buffer and resolve kernels), run
on the CPU under Triton's interpreter: it must draw exactly what the PyTorch and Numba backends draw.

Triton reads TRITON_INTERPRET when a kernel is defined, so each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
import torch
sys.path.insert(0, {bench!r})
from render import random_params
from infodissect.faces.model import build_face_model
from infodissect.faces.render import Camera, render

model = build_face_model()
camera = Camera(resolution={res}, antialias={k}, color={color!r})
p = random_params(model, {n}, torch.device("cpu"), seed=11)
p["yaw"] = torch.linspace(-80.0, 80.0, {n})  # profiles: the far side's faces are culled or hidden
out = {{b: render(model, p, camera, backend=b) for b in ("triton", "torch", "numba")}}
img, parts = out["triton"]
print(json.dumps({{"shape": list(img.shape), "dtype": str(img.dtype), "drawn": float((parts > 0).float().mean()),
                  **{{b: [torch.equal(img, o[0]), torch.equal(parts, o[1])] for b, o in out.items() if b != "triton"}}}}))
"""


@pytest.mark.parametrize(("res", "k", "color", "n"), [(16, 2, "rgb", 2), (12, 3, "gray", 1)])
def test_the_triton_kernels_draw_exactly_what_the_other_backends_draw(res, k, color, n):
    code = SCRIPT.format(bench=str(ROOT / "benchmarks"), res=res, k=k, color=color, n=n)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["shape"] == [n, res, res, 3 if color == "rgb" else 1] and got["dtype"] == "torch.uint8"
    assert got["drawn"] > 0.1  # a face was drawn
    assert got["torch"] == [True, True], "pixels or part labels differ from the PyTorch backend's"
    assert got["numba"] == [True, True], "pixels or part labels differ from the Numba backend's"


def test_the_kernels_compile_for_hopper_without_fused_multiply_adds():
    """Compiled for an H100/H200 (sm_90, no GPU needed): the PTX keeps the arithmetic the interpreter checks:
    no fused multiply-add, correctly rounded division, and the z-test as a 64-bit atomic min."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from infodissect.faces import raster_triton as rt

    target = GPUTarget("cuda", 90, 32)
    options = rt.OPTIONS  # those of every launch
    zbuffer = triton.compile(ASTSource(fn=rt._zbuffer_kernel, signature={
        "screen": "*fp32", "faces": "*i32", "zbuf": "*i64", "n_faces": "i32", "n_verts": "i32", "height": "i32",
        "width": "i32", "DEPTH_SCALE": "constexpr", "INDEX_BITS": "constexpr", "BLOCK": "constexpr"},
        constexprs={"DEPTH_SCALE": rt._DEPTH_SCALE, "INDEX_BITS": rt._INDEX_BITS, "BLOCK": rt._FACES_PER_PROGRAM}), target=target,
        options=options).asm["ptx"]
    resolve = triton.compile(ASTSource(fn=rt._resolve_kernel, signature={
        "zbuf": "*i64", "screen": "*fp32", "colour": "*fp32", "faces": "*i32", "face_labels": "*u8",
        "background": "*fp32", "img": "*u8", "parts": "*u8", "n_pixels": "i32", "n_verts": "i32", "res": "i32",
        "K": "constexpr", "KK": "constexpr", "GRAY": "constexpr", "CHANNELS": "constexpr", "INDEX_BITS": "constexpr",
        "EMPTY": "constexpr", "BLOCK": "constexpr"},
        constexprs={"K": 2, "KK": 4, "GRAY": False, "CHANNELS": 3, "INDEX_BITS": rt._INDEX_BITS, "EMPTY": rt._EMPTY,
                    "BLOCK": rt._PIXELS_PER_PROGRAM}),
        target=target, options=options).asm["ptx"]
    for ptx in (zbuffer, resolve):
        assert "fma." not in ptx and "div.rn.f32" in ptx and "div.full" not in ptx and "div.approx" not in ptx
    assert re.search(r"(atom|red)\.global\.gpu\.relaxed\.min\.s64", zbuffer)  # (red: Triton >= 3.7 drops the unused result)
