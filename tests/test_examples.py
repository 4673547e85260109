"""The examples run as written (at tiny settings), each in its own process like a user would run it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ultralytics import YOLO

from tests.conftest import ROOT
from ultralytics_kd.data import make_synthetic_dataset

EXAMPLES = ROOT / "examples"


def _run(*args: str, timeout: int = 600) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_register_block_example():
    log = _run(str(EXAMPLES / "register_block.py"))
    assert "DWRep channels after width scaling: 32" in log
    diff = float(log.split("max |difference| =")[1].split()[0])
    assert diff < 1e-3


def test_fuse_export_example(tmp_path):
    log = _run(
        str(EXAMPLES / "fuse_export.py"), str(ROOT / "cfg" / "models" / "yolov9-tiny-gelan-rep.yaml"), "--imgsz", "64"
    )
    assert "ONNX:" in log and (tmp_path / "yolov9-tiny-gelan-rep.onnx").is_file()
    assert "TensorRT skipped" in log or "TensorRT:" in log


@pytest.mark.slow
def test_distill_custom_example(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n=12, imgsz=64, seed=0, test_frac=0.0)
    YOLO("yolov8s.yaml").train(
        data=str(data),
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        plots=False,
        amp=False,
        project=str(tmp_path),
        name="teacher",
        verbose=False,
    )
    teacher = tmp_path / "teacher" / "weights" / "last.pt"
    _run(
        str(EXAMPLES / "distill_custom.py"),
        "--data",
        str(data),
        "--teacher",
        str(teacher),
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--batch",
        "4",
        "--project",
        str(tmp_path / "kd"),
    )
    run = tmp_path / "kd" / "train"
    assert (run / "weights" / "best.pt").is_file() and (run / "kd_report.md").is_file()
    # the default for a student that cannot inherit: 1 epoch leaves no room for the mimic stage, so LD + CWD from random
    assert "kdld_loss" in (run / "results.csv").read_text()
