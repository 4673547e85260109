"""Datasets that need no download: a deterministic synthetic detection set for tests, examples and the demo."""

from ultralytics_kd.data.synth import CLASSES, make_synthetic_dataset, render_image

__all__ = ["CLASSES", "make_synthetic_dataset", "render_image"]
