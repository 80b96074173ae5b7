"""How visible each factor is in single pixels as the pose and framing vary: max pixel MI per factor.

    python benchmarks/visibility.py [--samples 2048] [--perms 20] [--scales 0 0.25 0.5 1]

Draws the demo's `analysis` set (every factor independent; config/config.yaml) with the
pose and framing ranges (yaw, pitch, roll, scale, shift) set to ``scale`` times the
previous demo's (yaw +-45, pitch +-20, roll +-15 deg, scale +-15%, shift +-8% of the
image), renders it and prints, per factor, the largest pixel MI (bits) and its
maximum-statistic threshold (graded factors given their parent, config ``mi.given``, as the MI stage measures them): the ceiling that position jitter puts on what one pixel can
tell about a factor. Scale 0.25 is about the demo's range (yaw +-12, pitch +-5, roll +-4 deg, scale +-4%,
shift +-2%).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from infodissect.analyses.information import factor_table, layer_information, pixel_array
from infodissect.config import load_config
from infodissect.faces.model import model_from_config
from infodissect.stimuli.design import build_design
from infodissect.stimuli.store import camera_from_config, render_design
from infodissect.store import dask_scheduler

BASE = {"yaw": 45.0, "pitch": 20.0, "roll": 15.0, "scale": 0.15, "shift_x": 0.08, "shift_y": 0.08}


def pixel_visibility(cfg: dict, scale: float, samples: int, perms: int) -> dict[str, tuple[float, float]]:
    """Max pixel MI and threshold (bits) per factor of the analysis set at a pose/framing ``scale``."""
    st = cfg["stimuli"]
    for name, half in BASE.items():
        centre = 1.0 if name == "scale" else 0.0
        st["factors"][name].update(min=centre - max(scale, 1e-4) * half, max=centre + max(scale, 1e-4) * half,
                                   neutral=centre)
    spec = {"seed": cfg["seed"], "identities": st["identities"], "heldout_identities": st["heldout_identities"],
            "generator": st["generator"], "factors": st["factors"],
            "set": dict(st["sets"]["analysis"], samples=samples)}
    design = build_design("analysis", spec)
    model, camera = model_from_config(st["generator"]), camera_from_config(st["render"])
    images = [img for _, img, _ in render_design(model, design.load(), camera, 128)]
    ds = design.assign(image=(("sample", "y", "x", "channel"), np.concatenate(images)))
    with dask_scheduler("synchronous"):
        res = layer_information(pixel_array(ds), factor_table(ds), n_perm=perms, given=cfg["mi"]["given"]).compute()
    return {str(f): (float(res["mi"].sel(factor=f).max()), float(res["threshold"].sel(factor=f)))
            for f in res.factor.values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--perms", type=int, default=20)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 1.0])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = {}
    for s in a.scales:
        t0 = time.perf_counter()
        rows[s] = pixel_visibility(load_config("config/config.yaml"), s, a.samples, a.perms)
        print(f"scale {s:g}: {time.perf_counter() - t0:.0f} s", flush=True)
    factors = list(next(iter(rows.values())))
    print("max pixel MI, bits (threshold) at pose/framing range scale:")
    print(f"{'factor':22s}" + "".join(f"{f'x{s:g}':>18s}" for s in a.scales))
    for f in factors:
        print(f"{f:22s}" + "".join(f"{rows[s][f][0]:>10.3f} ({rows[s][f][1]:.3f})" for s in a.scales))
    print("issue 12 bar: expression and gender >= 0.15, expression_intensity and gender_strength >= 0.05 "
          "(demo: about scale 0.25)")


if __name__ == "__main__":
    main()
