"""The demo end to end at tiny settings (through examples/quickstart.py), its report, and its input checks."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops

from tests.conftest import ROOT
from ultralytics_kd.demo import DEFAULTS, STUDENT, demo_dir, run_demo
from ultralytics_kd.distill.transplant import transplant_problem
from ultralytics_kd.engine.resume import kd_checkpoint_state
from ultralytics_kd.report import cli as report_cli
from ultralytics_kd.report import start_markdown
from ultralytics_kd.report.gallery import TITLE_PX


def test_demo_teacher_head_is_takeable():
    # the demo exists to show the path the README recommends: the student takes the default teacher's head
    student, teacher = (DetectionModel(DEFAULTS[k], nc=5, verbose=False).model[-1] for k in ("student", "teacher"))
    assert transplant_problem(student, teacher) is None


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path):
    # through examples/quickstart.py, as a user runs it (it calls run_demo); 2 student epochs leave room for the
    # mimic stage (a quarter of the run, at least one epoch) and one epoch with the teacher's head
    args = ["n=24", "imgsz=64", "epochs=2", "teacher_epochs=1", "batch=8", "workers=0", f"project={tmp_path}"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out, log = tmp_path / "demo", proc.stdout + proc.stderr
    assert "6/6 writing the report" in log
    assert "kd_init=auto: the student imitates the teacher's Detect inputs" in log
    assert "epoch 2: mimic stage over, the student takes the teacher's head" in log
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
        "predictions.png",
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
    gflops = round(get_flops(fused, 64), 2)  # the latency column is a wall time: not asserted
    assert rows["student scratch"]["gflops"] == rows["student distilled"]["gflops"] == gflops > 0
    assert rows["teacher"]["gflops"] > gflops

    # the distilled student went through the mimic stage and took the teacher's head, as its checkpoint records
    state = kd_checkpoint_state(out / "distilled" / "weights" / "last.pt")
    assert state["mimic"] and state["transplanted"] and not state["inherited"]
    assert state["settings"]["kd_recipe"] == "default"

    # the picture: 4 val images x (ground truth, teacher, scratch, distilled), 256 px tiles under a title strip
    assert cv2.imread(str(out / "predictions.png")).shape == (TITLE_PX + 4 * 256, 4 * 256, 3)

    # both reports name the start and the terms, and show the picture
    table, report = (out / "demo_table.md").read_text(), (out / "distilled" / "kd_report.md").read_text()
    for md in (table, report):
        assert "recipe `default`, kd_init `auto`" in md and "then given the teacher's Detect head" in md
        assert "`mimic` (epochs 1)" in md and "stock box/cls/dfl loss alone (epochs 2)" in md
    assert "![predictions](predictions.png)" in table and "![predictions](../predictions.png)" in report
    assert "| student distilled |" in report and "kd_losses.png" in report
    assert "train/kd" in (out / "distilled" / "results.csv").read_text().replace(" ", "")
    assert report_cli({"run": str(out / "distilled")}).is_file()  # yolo-kd report on the same run


def test_start_markdown():
    cols = {"epoch": [1, 2, 3, 4, 5], "train/kdmim_loss": [0.5, 0.2, 0, 0, 0], "train/kdld_loss": [0, 0, 0.1, 0.1, 0]}
    state = {"settings": {"kd_recipe": "default", "kd_init": None}, "mimic": True, "transplanted": True}
    md = start_markdown(state, cols)
    assert "recipe `default`, kd_init `auto`" in md and "then given the teacher's Detect head" in md
    assert "`mimic` (epochs 1-2), `ld` (epochs 3-4), the stock box/cls/dfl loss alone (epochs 5)" in md
    assert "a uniform selection" in start_markdown({"settings": {"kd_recipe": "init"}, "inherited": True}, cols)
    assert "before the head transplant" in start_markdown({"settings": {"kd_recipe": "default"}, "mimic": True}, cols)
    graft = {"settings": {"kd_recipe": "default"}, "mimic": True, "graft": True, "transplanted": True}
    cols = {"epoch": [1, 2, 3], "train/kdgraft_loss": [0.9, 0.4, 0]}
    md = start_markdown(graft, cols)
    assert "then its neck and head given a uniform selection of the teacher's (grafted)" in md
    assert "`graft` (epochs 1-2), the stock box/cls/dfl loss alone (epochs 3)" in md


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
