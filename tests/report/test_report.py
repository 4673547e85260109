"""kd_report.md from what a run wrote, through the trainer's report callback: no global state touched, no checkpoint."""

from __future__ import annotations

import json
from types import SimpleNamespace

import matplotlib
import pytest

from ultralytics_kd.engine.callbacks import _write_report
from ultralytics_kd.report import cli as report_cli

HEADER = "epoch,train/box_loss,train/kdcls_loss,metrics/mAP50(B),metrics/mAP50-95(B)\n"


@pytest.fixture
def run(tmp_path):
    """A finished run's folder as KDTrainer leaves it, minus the weights (the report must not need them)."""
    (tmp_path / "results.csv").write_text(HEADER + "1,2.0,0.5,0.30,0.10\n2,1.5,0.4,0.50,0.25\n3,1.4,0.3,0.45,0.20\n")
    (tmp_path / "args.yaml").write_text("teacher: teacher.pt\nkd_T: 2.0\n")
    return tmp_path


@pytest.fixture
def svg_backend():
    """A non-Agg backend as the user's choice, restored afterwards (switching it back is this test's own doing)."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(before)


def test_report_callback_keeps_backend_and_reads_no_checkpoint(run, svg_backend):
    teacher = {"metrics/mAP50-95(B)": 0.625, "metrics/mAP50(B)": 0.875, "fitness": 0.6}
    _write_report(SimpleNamespace(save_dir=run, kd_teacher_metrics=teacher))
    assert matplotlib.get_backend() == svg_backend
    report = (run / "kd_report.md").read_text()
    assert "Teacher on val before training: mAP50-95 0.625, mAP50 0.875" in report
    assert "best val mAP50-95 0.250 (mAP50 0.500) at epoch 2 of 3" in report
    assert (run / "kd_losses.png").read_bytes()[:4] == b"\x89PNG" and (run / "kd_map.png").stat().st_size > 0
    assert json.loads((run / "kd_teacher.json").read_text()) == teacher

    (run / "kd_report.md").unlink()  # yolo-kd report later: the teacher's numbers come from kd_teacher.json
    assert "mAP50-95 0.625" in report_cli({"run": str(run)}).read_text()
    assert matplotlib.get_backend() == svg_backend


def test_report_without_teacher_metrics(run):
    _write_report(SimpleNamespace(save_dir=run, kd_teacher_metrics=None))  # kd_teacher_check=False
    report = (run / "kd_report.md").read_text()
    assert "Teacher on val before training" not in report and "Teacher: `teacher.pt`" in report
    assert not (run / "kd_teacher.json").exists()
