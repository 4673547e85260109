"""Distillation reports: a comparison table, per-term KD loss curves and student-vs-teacher mAP, as Markdown + PNG.

``yolo-kd report run=runs/detect/train`` (and the end of every KD training) writes ``kd_report.md`` beside the run's
``results.csv``. The demo adds a table row per model (params, GFLOPs, ONNX Runtime latency, mAP, file size).

Three jobs, one module each: :mod:`.measure` runs validation, export and ONNX Runtime for a table row;
:mod:`.plots` draws PNGs from numbers already read and :mod:`.gallery` draws predicted boxes on images;
:mod:`.markdown` reads what a run wrote and writes the report. Nothing here changes the caller's global state: the
plots use their own Figure, never pyplot's backend.
"""

from ultralytics_kd.report.gallery import ground_truth, plot_gallery
from ultralytics_kd.report.markdown import (
    MAP,
    MAP50,
    cli,
    read_results,
    start_markdown,
    table_markdown,
    write_report,
)
from ultralytics_kd.report.measure import ModelRow, measure_model
from ultralytics_kd.report.plots import plot_kd_losses, plot_map, plot_tradeoff

__all__ = [
    "MAP",
    "MAP50",
    "ModelRow",
    "cli",
    "ground_truth",
    "measure_model",
    "plot_gallery",
    "plot_kd_losses",
    "plot_map",
    "plot_tradeoff",
    "read_results",
    "start_markdown",
    "table_markdown",
    "write_report",
]
