"""Training: ResNet-10 on a stimulus set, on one process or with torchrun DDP, resumable."""

from .data import DataError, StoreBatches, task_labels
from ..config import parse_model_name
from .loop import TrainSpec, train

__all__ = ["DataError", "StoreBatches", "task_labels", "TrainSpec", "parse_model_name", "train"]
