"""A controlled 3D generative model of faces and its batched renderer."""

from .factors import FACTORS
from .mesh import PART_NAMES, build_template
from .model import GENERATOR_VERSION, FaceModel, build_face_model, model_from_config
from .render import Camera, render

__all__ = ["FACTORS", "PART_NAMES", "GENERATOR_VERSION", "FaceModel", "Camera", "build_face_model",
           "build_template", "model_from_config", "render"]
