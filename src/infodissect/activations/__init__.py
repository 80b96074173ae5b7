"""Activation stage: every read-out layer of a trained model into chunked, labelled Zarr."""

from .extract import ExtractionError, describe, extract, load_trained

__all__ = ["ExtractionError", "describe", "extract", "load_trained"]
