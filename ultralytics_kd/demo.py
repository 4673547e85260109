"""The main job end to end on generated data: teacher -> scratch student -> distilled student -> fused ONNX -> report.

``yolo-kd demo`` (or ``python examples/quickstart.py``) runs it with defaults sized for about ten minutes on a 2-core
CPU; every stage is an ordinary Ultralytics training or export, so its usual keys scale it (``epochs=``, ``imgsz=``).
Nothing is downloaded: the data comes from :mod:`ultralytics_kd.data` and every model is built from a YAML.

The teacher is a YOLOv8-s, whose Detect head starts with plain convs, so the ShuffleV2 student takes the path the
README recommends for a student of another family: with the ``default`` recipe, ``kd_init=auto`` runs the mimic stage
(the student imitates the teacher's Detect inputs for ``kd_mimic_epochs``), then transplants the teacher's head. The
report says how the distilled student started and which terms trained when (read from its checkpoint's ``"kd"`` entry
and its results.csv), and ``predictions.png`` shows a few val images with every model's boxes side by side.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from ultralytics import YOLO
from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.files import increment_path

from ultralytics_kd.data import make_synthetic_dataset
from ultralytics_kd.deploy import OnnxRunner
from ultralytics_kd.deploy.measure import parity, parity_ok, parity_rule
from ultralytics_kd.engine.resume import kd_checkpoint_state
from ultralytics_kd.report import (
    ground_truth,
    measure_model,
    plot_gallery,
    read_results,
    start_markdown,
    table_markdown,
    write_report,
)

STUDENT = str(Path(__file__).parent / "cfg" / "models" / "yolov9-tiny-shufflev2-c2f.yaml")
DEFAULTS: dict[str, Any] = dict(
    project="runs/kd_demo",
    name="demo",
    teacher="yolov8s.yaml",  # its Detect head starts with plain convs, so the ShuffleV2 student can take it
    student=STUDENT,
    n=400,
    imgsz=128,
    epochs=20,
    teacher_epochs=25,
    batch=8,
    seed=0,
    difficulty="easy",
    workers=2,
    device="cpu",
    kd_recipe="default",
)
_ROWS = 4  # val images in the predictions picture


def _say(msg: str) -> None:
    LOGGER.info(f"\n{colorstr('bold', 'blue', 'yolo-kd demo:')} {msg}")


def _train(model: str, save_dir: Path, name: str, cfg: dict, epochs: int, **extra) -> Path:
    """One stock Ultralytics training into ``save_dir/name``; returns its best.pt."""
    kwargs = dict(
        data=cfg["data"],
        epochs=epochs,
        imgsz=cfg["imgsz"],
        batch=cfg["batch"],
        seed=cfg["seed"],
        workers=cfg["workers"],
        device=cfg["device"],
        project=str(save_dir),
        name=name,
        exist_ok=False,
        # Picked on short trials of the teacher at the defaults, so that it is worth imitating within minutes: a step
        # per batch (the stock nbs=64 gives a few hundred images ~5 steps an epoch), a fixed AdamW rate, and no mosaic,
        # which at 128 px shrinks objects to a few pixels (the teacher learned far slower with it).
        nbs=cfg["batch"],
        optimizer="AdamW",
        lr0=0.002,
        mosaic=0.0,
        plots=False,
        amp=False,
        deterministic=True,
        verbose=False,
    )
    YOLO(model).train(**kwargs, **extra)
    return save_dir / name / "weights" / "best.pt"


def _onnx_parity(weights: Path, onnx_file: str | Path, imgsz: int) -> dict[str, float]:
    """The ONNX file on ONNX Runtime against the fused PyTorch model, on one random image (see ``parity``)."""
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    model = YOLO(weights).model.float().eval().fuse(verbose=False)
    with torch.no_grad():
        return parity(OnnxRunner(onnx_file)(x)[0], model(x)[0], imgsz)


def _predictions(cfg: dict, weights: dict[str, Path], rows: list, out: Path) -> Path:
    """The first ``_ROWS`` val images with the ground truth and each model's predicted boxes, side by side."""
    images = sorted((Path(cfg["data"]).parent / "images" / "val").glob("*.png"))[:_ROWS]
    columns = {"ground truth": ground_truth(images, YOLO(weights["teacher"]).names)}
    for (name, w), row in zip(weights.items(), rows):
        results = YOLO(w).predict(images, imgsz=cfg["imgsz"], device=cfg["device"], verbose=False)
        columns[f"{name} (mAP50-95 {row.map50_95:.2f})"] = results
    return plot_gallery(columns, out, no_conf=["ground truth"])


def _check(overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge the overrides into the defaults and check them, before anything is written."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"yolo-kd demo: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **overrides}
    limits = {
        "n": (8, 100_000),
        "imgsz": (32, 4096),
        "epochs": (1, 10_000),
        "teacher_epochs": (1, 10_000),
        "batch": (1, 1024),
        "seed": (0, 2**31 - 1),
        "workers": (0, 64),
    }
    for key, (lo, hi) in limits.items():
        try:
            cfg[key] = int(cfg[key])
        except (TypeError, ValueError):
            raise ValueError(f"yolo-kd demo: {key}={cfg[key]!r} must be a whole number from {lo} to {hi}") from None
        if not lo <= cfg[key] <= hi:
            raise ValueError(f"yolo-kd demo: {key}={cfg[key]} is out of range; use {lo} to {hi}")
    return cfg


def demo_dir(project: str | Path, name: str) -> Path:
    """A new folder ``project/name``, ``project/name2``, ... like Ultralytics runs: an earlier demo is never touched."""
    project = Path(project)
    try:
        project.mkdir(parents=True, exist_ok=True)
        if not os.access(project, os.W_OK):
            raise PermissionError(f"no write permission on {project}")
    except OSError as e:
        raise PermissionError(
            f"yolo-kd demo cannot write to project={project} ({e}); pass project=<a writable folder>"
        ) from e
    return increment_path(project / name, mkdir=True).resolve()


def run_demo(**overrides: Any) -> Path:
    """Run the demo; every key of :data:`DEFAULTS` can be overridden. Returns the demo folder (never overwritten)."""
    from ultralytics_kd import KDTrainer

    cfg = _check(overrides)
    save_dir = demo_dir(cfg["project"], cfg["name"])
    t0 = time.time()

    _say(f"1/6 generating {cfg['n']} synthetic images at {cfg['imgsz']} px in {save_dir / 'data'}")
    cfg["data"] = str(
        make_synthetic_dataset(
            save_dir / "data", n=cfg["n"], imgsz=cfg["imgsz"], seed=cfg["seed"], difficulty=cfg["difficulty"]
        )
    )

    _say(f"2/6 training the teacher ({cfg['teacher']}, {cfg['teacher_epochs']} epochs) -> {save_dir / 'teacher'}")
    teacher = _train(cfg["teacher"], save_dir, "teacher", cfg, cfg["teacher_epochs"])

    _say(f"3/6 training the student from scratch ({Path(cfg['student']).name}, {cfg['epochs']} epochs)")
    scratch = _train(cfg["student"], save_dir, "scratch", cfg, cfg["epochs"])

    _say(f"4/6 distilling the same student from the teacher with KDTrainer (recipe '{cfg['kd_recipe']}')")
    distilled = _train(
        cfg["student"],
        save_dir,
        "distilled",
        cfg,
        cfg["epochs"],
        trainer=KDTrainer,
        teacher=str(teacher),
        kd_recipe=cfg["kd_recipe"],
    )

    _say("5/6 validating all three, fusing and exporting each to ONNX, timing ONNX Runtime, drawing predictions")
    weights = {"teacher": teacher, "student scratch": scratch, "student distilled": distilled}
    rows = [measure_model(name, w, cfg["data"], cfg["imgsz"], project=save_dir) for name, w in weights.items()]
    onnx_file = distilled.with_suffix(".onnx")
    diff = _onnx_parity(distilled, onnx_file, cfg["imgsz"])
    if not parity_ok(diff, "onnxruntime-cpu"):
        raise RuntimeError(
            f"ONNX Runtime output differs from PyTorch by {diff['max_abs']:.2e} (boxes / imgsz, scores; "
            f"{parity_rule('onnxruntime-cpu')}) for {onnx_file}"
        )
    picture = _predictions(cfg, weights, rows, save_dir / "predictions.png")

    _say("6/6 writing the report")
    # how the distilled student started is in its checkpoint, which terms trained when in its results.csv
    start = start_markdown(kd_checkpoint_state(distilled), read_results(save_dir / "distilled"))
    gain = rows[2].map50_95 - rows[1].map50_95
    notes = (
        f"{start}\n\n"
        f"Distilled ONNX: `{onnx_file}` (ONNX Runtime vs PyTorch: max abs difference {diff['max_abs']:.1e} in "
        f"boxes / imgsz and scores, cosine {diff['cosine']:.6f}).\n\n"
        f"Distillation changed the student's val mAP50-95 by {gain:+.3f} over scratch; "
        f"demo wall time {(time.time() - t0) / 60:.1f} min."
    )
    caption = f"The first {_ROWS} val images: ground truth, then each model's boxes (confidence >= 0.25)."
    report = write_report(
        save_dir / "distilled",
        rows=rows,
        scratch=save_dir / "scratch",
        notes=f"{notes}\n\n## Predictions\n\n{caption}\n\n![predictions](../{picture.name})",
    )
    table = table_markdown(rows)
    (save_dir / "demo_table.md").write_text(f"{table}\n\n![predictions]({picture.name})\n\n{caption}\n\n{notes}\n")
    print(f"\n{table}\n\n{notes}\nPredictions: {picture}\nReport: {report}\n")
    return save_dir


def cli(args: dict[str, Any]) -> Path:
    """``yolo-kd demo [epochs=20 teacher_epochs=25 imgsz=128 n=400 ...]``."""
    return run_demo(**args)
