"""Print rendering throughput (images/s) at 64 px and 224 px on CPU (and CUDA when present).

    python benchmarks/render.py [--threads 2] [--batch 128] [--repeats 3]

Renders random identities with every factor sampled, through the same code the
stimulus stage uses (infodissect.faces.render), with the demo generator.
"""

from __future__ import annotations

import argparse
import time

import torch

from infodissect.faces.model import build_face_model
from infodissect.faces.render import Camera, render


def random_params(model, n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random factor values for ``n`` faces."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: (torch.rand(n, generator=g) * (hi - lo) + lo)  # noqa: E731
    p = {
        "shape_coeff": torch.randn(n, model.shape_basis.shape[0], generator=g),
        "texture_coeff": torch.randn(n, model.texture_basis.shape[0], generator=g),
        "gender": torch.randint(0, 2, (n,), generator=g), "gender_strength": u(0, 1),
        "ethnicity": torch.randint(0, 3, (n,), generator=g), "age": u(20, 70),
        "expression": torch.randint(0, 7, (n,), generator=g), "expression_intensity": u(0.3, 1),
        "yaw": u(-45, 45), "pitch": u(-20, 20), "roll": u(-15, 15), "light_azimuth": u(-60, 60),
        "light_elevation": u(-20, 50), "light_ambient": u(0.2, 0.6), "scale": u(0.85, 1.15),
        "shift_x": u(-0.08, 0.08), "shift_y": u(-0.08, 0.08), "background": u(0.15, 0.85),
    }
    return {k: v.to(device) for k, v in p.items()}


def throughput(model, camera: Camera, batch: int, repeats: int) -> float:
    """Images per second of ``render`` for full batches (after one warm-up batch)."""
    p = random_params(model, batch, model.device)
    with torch.inference_mode():
        render(model, p, camera)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            render(model, p, camera)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--antialias", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        model = build_face_model(device=dev)
        for res in (64, 224):
            batch = a.batch if res == 64 else max(1, a.batch // 4)
            if dev.type == "cuda":
                batch *= 8
            camera = Camera(resolution=res, antialias=a.antialias)
            ips = throughput(model, camera, batch, a.repeats)
            where = f"cpu ({a.threads} threads)" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
            print(f"render {res:>3} px, antialias {a.antialias}, mesh stride {camera.stride}, batch {batch:>4}, "
                  f"{where}: {ips:8.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
