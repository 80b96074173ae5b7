"""Rendering designs into Zarr stores, shard by shard, and gathering the shards.

Stores are written and read through :mod:`infodissect.store` (atomic, integrity-checked).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from tqdm import tqdm

from ..faces.factors import ETHNICITIES, EXPRESSIONS, GENDERS, HAIR_STYLES
from ..faces.mesh import PART_NAMES
from ..faces.version import GENERATOR_VERSION
from .design import ROW_CODES, TABLE_CODES, sample_codes, with_row_codes
from ..store import StoreError, atomic_store, open_dataset, save_dataset, write_zarr
from ..threads import resolve_device

if TYPE_CHECKING:  # PyTorch and the face model are imported where they are used: gathering needs neither
    import torch

    from ..faces.model import FaceModel
    from ..faces.render import Camera

log = logging.getLogger(__name__)

_CODES = {"gender": GENDERS, "ethnicity": ETHNICITIES, "hair_style": HAIR_STYLES, "expression": EXPRESSIONS}
_CONTINUOUS = ("gender_strength", "age", "expression_intensity", "yaw", "pitch", "roll", "light_azimuth",
               "light_elevation", "light_ambient", "scale", "shift_x", "shift_y", "background")


def open_stimuli(path: str | Path, require: tuple[str, ...] = (), chunks: dict[str, int] | None = None) -> xr.Dataset:
    """Open a stimulus store or design lazily, checked (:func:`infodissect.store.open_dataset`, read in ``chunks``)
    and from this generator version."""
    ds = open_dataset(path, require, what="stimulus store", chunks=chunks)
    version = ds.attrs.get("generator_version")
    if version != GENERATOR_VERSION:
        raise StoreError(f"{path}: made by generator version {version!r}, this is {GENERATOR_VERSION!r}; "
                         "rerun the stimulus stage")
    return ds


def design_params(design: xr.Dataset, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Renderer parameters (torch tensors) for every sample of a (loaded) design slice."""
    import torch

    shape, texture = sample_codes(design)
    p = {"shape_coeff": torch.as_tensor(shape, dtype=torch.float32, device=device),
         "texture_coeff": torch.as_tensor(texture, dtype=torch.float32, device=device)}
    return p | factor_params(design, device)


def factor_params(design: xr.Dataset, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The renderer parameters of a (loaded) design slice other than the identity codes: categorical
    factors as level indices, continuous ones as float32."""
    import torch

    p: dict[str, torch.Tensor] = {}
    for name, levels in _CODES.items():
        values = [str(v) for v in design[name].values.tolist()]
        unknown = sorted(set(values) - set(levels))
        if unknown:
            raise StoreError(f"factor {name}: unknown level(s) {unknown} (known: {list(levels)})")
        index = {lv: i for i, lv in enumerate(levels)}
        p[name] = torch.as_tensor([index[v] for v in values], dtype=torch.long, device=device)
    for name in _CONTINUOUS:
        p[name] = torch.as_tensor(design[name].values.astype(np.float64), dtype=torch.float32, device=device)
    return p


def camera_from_config(render_cfg: dict[str, Any]) -> Camera:
    """The camera described by the ``stimuli.render`` config section."""
    from ..faces.render import Camera

    return Camera(
        resolution=int(render_cfg["resolution"]),
        antialias=int(render_cfg["antialias"]),
        fov_deg=float(render_cfg["fov_deg"]),
        distance=float(render_cfg["distance"]),
        color=str(render_cfg["color"]),
        detail=int(render_cfg["detail"]),
    )


def render_design(model: FaceModel, design: xr.Dataset, camera: Camera, batch_size: int,
                  progress: bool = False) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Render a design in fixed-size batches; yields (start, images, parts) per batch.

    Batches are always ``batch_size`` long (the last one padded by repeating its
    final row and cropped afterwards), so every sample is computed with the same
    shapes whatever slice of the design is rendered: results are bit-identical
    across shardings.
    """
    import torch

    from ..faces.render import render

    n = design.sizes["sample"]
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="render", unit="batch", disable=not progress, mininterval=5):
        stop = min(start + batch_size, n)
        idx = np.concatenate([np.arange(start, stop), np.full(batch_size - (stop - start), stop - 1)])
        params = design_params(design.isel(sample=idx).load(), model.device)
        with torch.inference_mode():
            img, parts = render(model, params, camera)
        yield start, img[: stop - start].cpu().numpy(), parts[: stop - start].cpu().numpy()


def _shard_bounds(n: int, shard: int, shard_size: int) -> slice:
    lo = shard * shard_size
    if lo >= n or shard < 0:
        raise StoreError(f"shard {shard} is out of range for a set of {n} samples and shard_size {shard_size}")
    return slice(lo, min(lo + shard_size, n))


def _open_design(design_path: str | Path, spec: dict[str, Any]) -> tuple[xr.Dataset, dict[str, Any]]:
    """A design table and its generator, refused if the render spec names another generator."""
    design = open_stimuli(design_path, require=("identity_shape", "identity_texture"))
    generator = json.loads(design.attrs["generator"])
    if generator != spec["generator"]:
        raise StoreError(f"{design_path}: made with generator {generator}, but the render spec has {spec['generator']}")
    return design, generator


def render_shard(design_path: str | Path, shard: int, spec: dict[str, Any], out: str | Path) -> None:
    """Render shard ``shard`` of a design into its own store, batch by batch."""
    design, generator = _open_design(design_path, spec)
    rcfg = spec["render"]
    if int(rcfg["shard_size"]) % int(rcfg["batch_size"]):
        raise StoreError("stimuli.render.shard_size must be a multiple of stimuli.render.batch_size")
    from ..faces.model import model_from_config

    device = resolve_device(rcfg["device"], "stimuli.render.device")
    model = model_from_config(generator, device)
    camera = camera_from_config(rcfg)
    part = with_row_codes(design.isel(sample=_shard_bounds(design.sizes["sample"], shard, int(rcfg["shard_size"]))).load())
    n, res, ch = part.sizes["sample"], camera.resolution, camera.channels
    log.info("rendering shard %d: %d images at %d px on %s", shard, n, res, device)
    with atomic_store(out, inputs=[design_path]) as tmp:
        template = _with_image_vars(part, n, res, ch, int(rcfg["batch_size"]), spec)
        write_zarr(template, tmp, compute=False)
        for start, img, parts in render_design(model, part, camera, int(rcfg["batch_size"]), progress=True):
            region = {"sample": slice(start, start + len(img))}
            batch = xr.Dataset({"image": (("sample", "y", "x", "channel"), img), "parts": (("sample", "y", "x"), parts)})
            write_zarr(batch, tmp, region=region)


def render_in_memory(design_path: str | Path, spec: dict[str, Any], resolution: int | None = None) -> xr.Dataset:
    """A small set rendered in memory (for figures): the design with ``image`` and ``parts``,
    at ``resolution`` instead of the render spec's if given."""
    design, generator = _open_design(design_path, spec)
    design = with_row_codes(design.load())
    rcfg = dict(spec["render"], **({"resolution": int(resolution)} if resolution else {}))
    camera = camera_from_config(rcfg)
    from ..faces.model import model_from_config

    model = model_from_config(generator, resolve_device(rcfg["device"], "stimuli.render.device"))
    batch = min(int(rcfg["batch_size"]), design.sizes["sample"])
    images, parts = [], []
    for _, img, lab in render_design(model, design, camera, batch):
        images.append(img)
        parts.append(lab)
    ds = design.assign(image=(("sample", "y", "x", "channel"), np.concatenate(images)),
                       parts=(("sample", "y", "x"), np.concatenate(parts)))
    ds.attrs["render"] = json.dumps(rcfg, sort_keys=True)
    return ds


def _with_image_vars(design: xr.Dataset, n: int, res: int, channels: int, chunk: int, spec: dict[str, Any]) -> xr.Dataset:
    """The design plus lazily-zero ``image`` and ``parts`` variables with their chunking and attrs."""
    import dask.array as da

    ds = design.copy()
    ds["image"] = (("sample", "y", "x", "channel"), da.zeros((n, res, res, channels), dtype=np.uint8,
                                                             chunks=(chunk, res, res, channels)))
    ds["parts"] = (("sample", "y", "x"), da.zeros((n, res, res), dtype=np.uint8, chunks=(chunk, res, res)))
    ds = ds.assign_coords(y=np.arange(res), x=np.arange(res),
                          channel=np.array(["r", "g", "b"] if channels == 3 else ["gray"], dtype=object))
    ds["image"].attrs.update(description="rendered image", units="display value 0-255")
    ds["parts"].attrs.update(description="face-part label map", part_names=list(PART_NAMES),
                             flag_values=list(range(len(PART_NAMES))), flag_meanings=" ".join(PART_NAMES))
    ds.attrs["render"] = json.dumps(spec["render"], sort_keys=True)
    ds = _without_chunk_encoding(ds)
    for name in (*ROW_CODES, *TABLE_CODES):
        if name in ds:
            # In memory (not Dask), so that the template write (compute=False) stores their values.
            ds[name] = ds[name].load()
            if ds[name].dims[0] == "sample":
                ds[name].encoding["chunks"] = (chunk, ds[name].shape[1])
    return ds


def _without_chunk_encoding(ds: xr.Dataset) -> xr.Dataset:
    """Forget the chunking a Dataset was read with, so it is written with its Dask chunks."""
    for v in ds.variables.values():
        v.encoding.pop("chunks", None)
        v.encoding.pop("preferred_chunks", None)
    return ds


def gather_shards(design_path: str | Path, shard_paths: list[str | Path], out: str | Path,
                  chunk_bytes: int = 8 << 20) -> None:
    """Concatenate shard stores (in order) into the final set store, streaming with Dask."""
    design = open_stimuli(design_path)
    shards = [open_stimuli(p, require=("image", "parts")) for p in shard_paths]
    # Only what lies along samples is concatenated; the identity table is the same in every shard.
    ds = xr.concat(shards, dim="sample", data_vars="minimal", coords="minimal", compat="override",
                   join="override", combine_attrs="override")
    n = design.sizes["sample"]
    if ds.sizes["sample"] != n or not np.array_equal(ds["sample"].values, design["sample"].values):
        raise StoreError(f"shards cover {ds.sizes['sample']} samples but the design {design_path} has {n}")
    per_image = int(np.prod(ds["image"].shape[1:]))
    chunk = int(max(1, min(n, chunk_bytes // max(per_image, 1))))
    ds = _without_chunk_encoding(ds.chunk({"sample": chunk}))
    ds.attrs.update(shards[0].attrs)
    save_dataset(ds, out, inputs=[design_path, *shard_paths])
