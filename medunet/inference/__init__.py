"""Inference: preprocess like training, sliding window, back to the exact source grid."""

from __future__ import annotations

from medunet.inference.geometry import GridMap, plan_grid
from medunet.inference.postprocess import fill_holes, keep_largest_component
from medunet.inference.predictor import Prediction, Predictor, normalize_intensity

__all__ = [
    "GridMap",
    "Prediction",
    "Predictor",
    "fill_holes",
    "keep_largest_component",
    "normalize_intensity",
    "plan_grid",
]
