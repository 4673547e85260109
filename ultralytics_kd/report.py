"""Distillation reports: a comparison table, per-term KD loss curves and student-vs-teacher mAP, as Markdown + PNG.

``yolo-kd report run=runs/detect/train`` (and the end of every KD training) writes ``kd_report.md`` beside the run's
``results.csv``. The demo adds a table row per model (params, GFLOPs, ONNX Runtime latency, mAP, file size).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from ultralytics.utils import LOGGER

MAP, MAP50 = "metrics/mAP50-95(B)", "metrics/mAP50(B)"


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


def read_results(run: Path) -> dict[str, list[float]]:
    """Read a run's results.csv into columns (header names stripped, values as floats)."""
    with open(Path(run) / "results.csv") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            try:
                cols.setdefault(k.strip(), []).append(float(v))
            except (TypeError, ValueError):
                pass
    return cols


def plot_kd_losses(run: Path) -> Path | None:
    """Plot every ``train/kd*`` loss column over epochs, beside the stock detection losses; None if there are none."""
    plt = _pyplot()
    cols = read_results(run)
    kd = sorted(k for k in cols if k.startswith("train/kd"))
    if not kd:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), tight_layout=True)
    for k in kd:
        ax.plot(cols["epoch"], cols[k], marker=".", label=k.removeprefix("train/"))
    for k in ("train/box_loss", "train/cls_loss", "train/dfl_loss"):
        if k in cols:
            ax.plot(cols["epoch"], cols[k], ls="--", alpha=0.6, label=k.removeprefix("train/"))
    ax.set(xlabel="epoch", ylabel="loss", title="Distillation terms (solid) and detection losses (dashed)")
    ax.legend(fontsize=8)
    out = Path(run) / "kd_losses.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_map(run: Path, teacher: dict[str, float] | None = None, scratch: Path | None = None) -> Path:
    """Plot the student's val mAP over epochs, the teacher's as a line, and optionally a scratch run's."""
    plt = _pyplot()
    cols = read_results(run)
    fig, ax = plt.subplots(figsize=(7, 4), tight_layout=True)
    ax.plot(cols["epoch"], cols[MAP], marker=".", label="student (distilled) mAP50-95")
    ax.plot(cols["epoch"], cols[MAP50], marker=".", alpha=0.6, label="student (distilled) mAP50")
    if scratch is not None:
        sc = read_results(scratch)
        ax.plot(sc["epoch"], sc[MAP], ls=":", label="student (scratch) mAP50-95")
    if teacher:
        ax.axhline(teacher["mAP50-95"], color="k", ls="--", label=f"teacher mAP50-95 {teacher['mAP50-95']:.3f}")
    ax.set(xlabel="epoch", ylabel="mAP (val)", title="Student vs teacher")
    ax.legend(fontsize=8)
    out = Path(run) / "kd_map.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_tradeoff(rows: list[ModelRow], out: Path) -> Path:
    """Scatter mAP50-95 against ONNX Runtime latency, one labelled point per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), tight_layout=True)
    for r in rows:
        ax.scatter(r.latency_ms, r.map50_95, s=40)
        ax.annotate(f"{r.model}\n{r.params / 1e6:.2f} M", (r.latency_ms, r.map50_95), fontsize=8)
    ax.set(xlabel="latency, ONNX Runtime CPU, batch 1 (ms)", ylabel="mAP50-95 (val)", title="Accuracy vs latency")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def onnx_latency_ms(onnx_file: str | Path, imgsz: int, runs: int = 30, warmup: int = 5) -> float:
    """Median batch-1 latency of an ONNX model in ONNX Runtime on the CPU (pre/post-processing excluded)."""
    from ultralytics_kd.deploy import OnnxRunner
    from ultralytics_kd.deploy.measure import time_call

    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    return time_call(OnnxRunner(onnx_file).forward, x, warmup, runs).median


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


def table_markdown(rows: list[ModelRow]) -> str:
    """The comparison table in Markdown."""
    lines = [
        "| model | params | GFLOPs | latency ms (ORT CPU, b1) | mAP50-95 | mAP50 | file MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.model} | {r.params / 1e6:.2f} M | {r.gflops:.2f} | {r.latency_ms:.2f} | {r.map50_95:.3f} | "
        f"{r.map50:.3f} | {r.size_mb:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


def write_report(
    run: str | Path, rows: list[ModelRow] | None = None, scratch: str | Path | None = None, notes: str = ""
) -> Path:
    """Write ``kd_report.md`` and its plots into a KD run folder.

    Args:
        run (str | Path): The distilled student's run folder (holds results.csv, args.yaml).
        rows (list[ModelRow], optional): Comparison table rows (the demo measures teacher, scratch and distilled).
        scratch (str | Path, optional): A scratch student's run folder, drawn on the mAP plot for comparison.
        notes (str): Extra Markdown appended at the end.

    Returns:
        (Path): The report file.
    """
    run = Path(run)
    teacher = _teacher_metrics(run)
    losses = plot_kd_losses(run)
    mapplot = plot_map(run, teacher, Path(scratch) if scratch else None)
    cols = read_results(run)
    lines = [f"# Distillation report: {run}", ""]
    args = _read_args(run)
    if args.get("teacher"):
        kd = {k: v for k, v in args.items() if k.startswith("kd_") and v is not None}
        lines += [f"Teacher: `{args['teacher']}`; settings: `{kd}`", ""]
    if teacher:
        lines += [
            f"Teacher on val before training: mAP50-95 {teacher['mAP50-95']:.3f}, mAP50 {teacher['mAP50']:.3f}",
            "",
        ]
    best = max(range(len(cols[MAP])), key=cols[MAP].__getitem__)
    lines += [
        f"Student: best val mAP50-95 {cols[MAP][best]:.3f} (mAP50 {cols[MAP50][best]:.3f}) at epoch "
        f"{int(cols['epoch'][best])} of {len(cols[MAP])}.",
        "",
    ]
    if rows:
        lines += ["## Comparison", "", table_markdown(rows), ""]
        plot = plot_tradeoff(rows, run / "kd_tradeoff.png")
        lines += [f"![accuracy vs latency]({plot.name})", ""]
    if losses:
        lines += ["## Distillation loss per term", "", f"![KD losses]({losses.name})", ""]
    lines += ["## Student vs teacher mAP", "", f"![mAP]({mapplot.name})", ""]
    if notes:
        lines += [notes, ""]
    out = run / "kd_report.md"
    out.write_text("\n".join(lines))
    if rows:
        (run / "kd_table.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    LOGGER.info(f"KD report written to {out}")
    return out


def cli(args: dict[str, Any]) -> Path:
    """``yolo-kd report run=<run folder> [scratch=<run folder>]``."""
    run = args.get("run")
    if not run:
        raise ValueError("yolo-kd report needs run=<folder of a training run>, e.g. run=runs/detect/train")
    if not (Path(run) / "results.csv").exists():
        raise FileNotFoundError(f"yolo-kd report: no results.csv in '{run}'. Point run= at a training run's folder.")
    return write_report(run, scratch=args.get("scratch"))


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _teacher_metrics(run: Path) -> dict[str, float] | None:
    """The teacher's val mAP from KDTrainer's pre-training check, kept in the checkpoint's ``kd`` entry."""
    import torch

    ckpt = run / "weights" / "last.pt"
    if not ckpt.exists():
        return None
    metrics = (torch.load(ckpt, map_location="cpu", weights_only=False).get("kd") or {}).get("teacher_metrics") or {}
    if "metrics/mAP50-95(B)" not in metrics:
        return None
    return {"mAP50-95": metrics["metrics/mAP50-95(B)"], "mAP50": metrics["metrics/mAP50(B)"]}


def _read_args(run: Path) -> dict:
    import yaml

    f = run / "args.yaml"
    return yaml.safe_load(f.read_text()) if f.exists() else {}
