"""Measure one model for the comparison table: val mAP, fused params and GFLOPs, ONNX Runtime latency, file size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class ModelRow:
    """One line of the comparison table; every figure is measured by :func:`measure_model`."""

    model: str
    params: int
    gflops: float
    latency_ms: float
    map50_95: float
    map50: float
    size_mb: float
    weights: str = ""


def measure_model(
    name: str,
    weights: str | Path,
    data: str | Path,
    imgsz: int,
    onnx_file: str | Path | None = None,
    split: str = "val",
    project: str | Path | None = None,
) -> ModelRow:
    """Measure one model for the table: params and GFLOPs of the fused model, mAP, ONNX latency, checkpoint size.

    Args:
        name (str): Row label.
        weights (str | Path): The trained checkpoint (.pt).
        data (str | Path): Dataset YAML for validation.
        imgsz (int): Image size for validation, FLOPs and latency.
        onnx_file (str | Path, optional): An exported ONNX file; exported here (fused, simplified) when omitted.
        split (str): Split to validate on.
        project (str | Path, optional): Folder for the validation run (Ultralytics' default: runs/detect/val*).

    Returns:
        (ModelRow): The measured row.
    """
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    model = YOLO(weights)
    val_dir = {"project": str(project), "name": f"val-{name}".replace(" ", "-")} if project else {}
    metrics = model.val(
        data=str(data), imgsz=imgsz, split=split, batch=8, workers=0, plots=False, verbose=False, **val_dir
    )
    fused = model.model.fuse(verbose=False)
    params = sum(p.numel() for p in fused.parameters())
    gflops = get_flops(fused, imgsz)
    if onnx_file is None:
        onnx_file = model.export(format="onnx", imgsz=imgsz, simplify=True)
    return ModelRow(
        model=name,
        params=params,
        gflops=round(gflops, 2),
        latency_ms=round(onnx_latency_ms(onnx_file, imgsz), 2),
        map50_95=round(float(metrics.box.map), 4),
        map50=round(float(metrics.box.map50), 4),
        size_mb=round(Path(weights).stat().st_size / 1e6, 2),
        weights=str(weights),
    )


def onnx_latency_ms(onnx_file: str | Path, imgsz: int, runs: int = 30, warmup: int = 5) -> float:
    """Median batch-1 latency of an ONNX model in ONNX Runtime on the CPU (pre/post-processing excluded)."""
    from ultralytics_kd.deploy import OnnxRunner
    from ultralytics_kd.deploy.measure import time_call

    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    return time_call(OnnxRunner(onnx_file).forward, x, warmup, runs).median
