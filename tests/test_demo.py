"""The demo end to end at tiny settings (through examples/quickstart.py), its report, and its input checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from tests.conftest import ROOT
from ultralytics_kd.demo import STUDENT, demo_dir, run_demo
from ultralytics_kd.report import cli as report_cli


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path):
    # through examples/quickstart.py, as a user runs it (it calls run_demo)
    args = ["n=24", "imgsz=64", "epochs=1", "teacher_epochs=1", "batch=8", "workers=0", f"project={tmp_path}"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "demo"
    assert "6/6 writing the report" in proc.stdout + proc.stderr
    for f in (
        "demo_table.md",
        "distilled/kd_report.md",
        "distilled/kd_losses.png",
        "distilled/kd_map.png",
        "distilled/kd_tradeoff.png",
        "distilled/weights/best.onnx",
        "teacher/weights/best.pt",
        "scratch/weights/best.pt",
        "data/data.yaml",
    ):
        assert (out / f).is_file(), f
    rows = {r["model"]: r for r in json.loads((out / "distilled" / "kd_table.json").read_text())}
    assert set(rows) == {"teacher", "student scratch", "student distilled"}

    # the table's figures come from the runs: params of the fused built model, the checkpoint's size, its val mAP
    fused = DetectionModel(STUDENT, nc=5, verbose=False).fuse(verbose=False)
    n_student = sum(p.numel() for p in fused.parameters())
    assert rows["student scratch"]["params"] == rows["student distilled"]["params"] == n_student
    assert rows["teacher"]["params"] > n_student
    best = out / "distilled" / "weights" / "best.pt"
    assert rows["student distilled"]["size_mb"] == round(best.stat().st_size / 1e6, 2)
    m = YOLO(best).val(data=str(out / "data" / "data.yaml"), imgsz=64, batch=8, workers=0, plots=False)
    assert rows["student distilled"]["map50_95"] == pytest.approx(float(m.box.map), abs=1e-4)
    assert all(r["latency_ms"] > 0 and r["gflops"] > 0 for r in rows.values())

    report = (out / "distilled" / "kd_report.md").read_text()
    assert "| student distilled |" in report and "kd_losses.png" in report
    assert "train/kd" in (out / "distilled" / "results.csv").read_text().replace(" ", "")
    assert report_cli({"run": str(out / "distilled")}).is_file()  # yolo-kd report on the same run


def test_demo_dir_never_overwrites(tmp_path):
    first, second = demo_dir(tmp_path, "demo"), demo_dir(tmp_path, "demo")
    assert first != second and first.is_dir() and second.is_dir()


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"n": 0}, "n=0 is out of range"),
        ({"imgsz": 10_000}, "imgsz=10000"),
        ({"epochs": "many"}, "whole number"),
        ({"epoch": 3}, "unknown key"),
    ],
)
def test_demo_bad_input(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        run_demo(project=tmp_path, **overrides)
    assert not any(tmp_path.iterdir()), "nothing is written before the input is checked"


def test_demo_unwritable_project(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="project="):
        run_demo(project=blocker / "runs")


def test_report_cli_errors(tmp_path):
    with pytest.raises(ValueError, match="run="):
        report_cli({})
    with pytest.raises(FileNotFoundError, match="results.csv"):
        report_cli({"run": str(tmp_path)})
