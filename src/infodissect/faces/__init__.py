"""A controlled 3D generative model of faces and its batched renderer.

The names below load their modules on first use (PEP 562), so that importing
``infodissect.faces.factors`` (the configuration does) does not import PyTorch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {"FACTORS": "factors", "PART_NAMES": "mesh", "build_template": "mesh", "GENERATOR_VERSION": "version",
          "FaceModel": "model", "build_face_model": "model", "model_from_config": "model", "Camera": "render"}

__all__ = ["FACTORS", "PART_NAMES", "GENERATOR_VERSION", "FaceModel", "Camera", "build_face_model",
           "build_template", "model_from_config"]  # the renderer: the module infodissect.faces.render


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
