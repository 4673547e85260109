"""The compatibility subset: what must work on every supported Ultralytics release, run at both ends of the range.

CI runs it on the oldest supported release (``.ci/run``) and, with the rest of the suite, on the newest;
``benchmarks/release_probe.py`` runs it on a list of releases. Select it with ``pytest -m compat``. Kept to a couple of
minutes on 2 CPU cores: 64 px, four training images, untrained teachers (the start paths and the loss contract are
what differ between releases, not what a trained teacher teaches).
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from tests.conftest import ROOT
from tests.distill.conftest import TINY, make_dataset, save_untrained
from ultralytics_kd import KDTrainer, compat, list_models, model_yaml
from ultralytics_kd.nn.fuse import unfused_blocks

pytestmark = pytest.mark.compat

SHUFFLE = model_yaml("yolov9-tiny-shufflev2-c2f")  # mimic: another family than the teacher, a head that fits
ELAN = model_yaml("yolov9-tiny-shufflev2")  # graft: YOLOv9-t's neck and head on a ShuffleV2 backbone


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("compat_data"), n_train=4, n_val=2)


@pytest.fixture(scope="module")
def v8s(tmp_path_factory) -> Path:
    return save_untrained("yolov8s.yaml", tmp_path_factory.mktemp("teachers") / "v8s.pt")


def _rows(trainer) -> list[dict]:
    with open(trainer.csv) as f:
        return [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]


def _kd(model: YOLO, teacher: Path, data: Path, tmp_path: Path, **kw) -> KDTrainer:
    args = dict(epochs=1, kd_teacher_check=False, project=str(tmp_path), name="kd", exist_ok=True)
    model.train(trainer=KDTrainer, teacher=str(teacher), data=str(data), **{**TINY, **args, **kw})
    return model.trainer


# --- the version gate -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["8.3.253", "8.4.0", "8.4.103", "8.5.0", "9.0.1", "garbage"])
def test_versions_outside_the_range_are_refused(version):
    with pytest.raises(compat.UnsupportedUltralytics) as e:
        compat.check_version(version)
    message = str(e.value)
    assert "\n" not in message and f"found ultralytics {version};" in message
    assert compat.SUPPORTED in message and f'pip install "ultralytics{compat.SUPPORTED}"' in message


@pytest.mark.parametrize("version", ["8.4.104", "8.4.190", "8.4.999", "8.4.191rc1"])
def test_versions_inside_the_range_pass(version):
    compat.check_version(version)


def test_dependency_line_declares_the_supported_range():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in deps if d.startswith("ultralytics")] == [f"ultralytics{compat.SUPPORTED}"]


def test_import_with_an_old_release_stops_with_one_line(tmp_path):
    """A stand-in ``ultralytics`` 8.4.0 on the path: ``import ultralytics_kd`` must stop at the version check, before
    it imports anything the old release lacks (this stand-in has nothing but its version)."""
    fake = tmp_path / "ultralytics"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "8.4.0"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), compat.ANY_RELEASE: "0"}
    r = subprocess.run([sys.executable, "-c", "import ultralytics_kd"], env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == (
        "ultralytics_kd.compat.UnsupportedUltralytics: ultralytics-kd needs ultralytics>=8.4.104,<8.5 and found "
        'ultralytics 8.4.0; fix: pip install "ultralytics>=8.4.104,<8.5"'
    )
    frames = [line for line in r.stderr.splitlines() if line.startswith('  File "')]  # none in ultralytics itself
    assert "During handling" not in r.stderr and all("ultralytics_kd" in line for line in frames[1:]), r.stderr


def test_qat_is_present_or_refused_with_its_release():
    if compat.has("qat"):
        compat.require("qat", "train quantize=8")
    else:
        with pytest.raises(RuntimeError, match=r"quantize=8 needs ultralytics>=8\.4\.143 .* works"):
            compat.require("qat", "train quantize=8")
        assert compat.is_qat(DetectionModel("yolov8n.yaml", nc=2, verbose=False)) is False


def test_lad_is_present_or_refused_with_its_release():
    from ultralytics.cfg import get_cfg

    from ultralytics_kd.distill.criterion import KDDetectionLoss, TeacherAssigner

    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    model.args = get_cfg()
    if compat.has("lad"):
        assert isinstance(KDDetectionLoss(model, [], lad=True).assigner, TeacherAssigner)
    else:
        with pytest.raises(RuntimeError, match=r"\(kd_lad=True, kd_recipe=lad\) needs ultralytics>=8\.4\.180 "):
            KDDetectionLoss(model, [], lad=True)
    assert not isinstance(KDDetectionLoss(model, []).assigner, TeacherAssigner)  # without LAD, any release


def test_engine_header_is_read_or_refused_with_its_release(tmp_path):
    """The engine runner reads the header Ultralytics writes ahead of an engine (4-byte length, JSON), through the
    stock reader where the release has one."""
    import json

    from ultralytics_kd.deploy import read_engine_header

    meta = {"imgsz": [64, 64], "names": {"0": "a"}, "stride": 32}
    head = json.dumps(meta).encode()
    f = tmp_path / "a.engine"
    f.write_bytes(len(head).to_bytes(4, "little") + head + b"engine bytes")
    if compat.has("engine_header"):
        assert read_engine_header(f) == (4 + len(head), {"imgsz": [64, 64], "names": {0: "a"}, "stride": 32})
    else:
        with pytest.raises(RuntimeError, match=r"engine file's metadata .* needs ultralytics>=8\.4\.127 "):
            read_engine_header(f)


def test_validating_leaves_an_end2end_model_as_it_was(data):
    """What the teacher check relies on: a stock validator run on ``for_validation(m)`` neither fuses ``m`` nor drops
    its one-to-many branch (the branch distillation reads)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.models.yolo.detect import DetectionValidator

    model = DetectionModel("yolo26n.yaml", nc=2, verbose=False).eval()
    model.names = {0: "square", 1: "bar"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = get_cfg(overrides=dict(data=str(data), imgsz=64, batch=2, device="cpu", plots=False, verbose=False))
    metrics = DetectionValidator(args=args)(model=compat.for_validation(model))
    assert "metrics/mAP50-95(B)" in metrics
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert model.model[-1].cv2 is not None and not model.is_fused()


# --- students: build, fuse, ONNX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_packaged_student_builds_fuses_and_exports(name, tmp_path):
    """Every packaged student builds from its YAML, fuses exactly inside stock ``fuse()``, and its ONNX export gives
    the fused model's outputs on ONNX Runtime."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = YOLO(model_yaml(name))
    net = model.model.eval()
    for m in net.modules():  # non-trivial BN statistics, so that a wrong fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = net(x)[0]
        assert not net.is_fused()
        net.fuse(verbose=False)
        after = net(x)[0]
    assert net.is_fused() and not unfused_blocks(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))

    f = model.export(format="onnx", imgsz=64, simplify=False, project=str(tmp_path))
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, after.numpy(), rtol=1e-4, atol=1e-4 * float(after.abs().max()))


def test_ptq_int8_export(data, tmp_path):
    """The stock ``format=onnx quantize=8`` export through the plugin's INT8 step: the body quantized (Q/DQ pairs
    around the convs), and the file runs on ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    f = YOLO(model_yaml("yolov9-tiny-gelan-rep")).export(
        format="onnx", imgsz=64, quantize=8, data=str(data), batch=2, project=str(tmp_path)
    )
    ops = [n.op_type for n in onnx.load(f).graph.node]
    assert Path(f).name.endswith("_int8.onnx") and ops.count("QuantizeLinear") > 10
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.random.default_rng(0).random((2, 3, 64, 64), np.float32)})[0]
    assert out.shape[0] == 2 and np.isfinite(out).all()


# --- one short KD run per start path, and a resume --------------------------------------------------------------------


def _assert_trained(trainer, column: str, epochs: int = 1) -> list[dict]:
    rows = _rows(trainer)
    assert len(rows) == epochs and Path(trainer.best).is_file()
    assert all(math.isfinite(float(r[column])) for r in rows), rows
    return rows


def test_kd_select(data, v8s, tmp_path):
    """yolov8n under yolov8s: the student starts from a selection of the teacher's weights and trains its terms."""
    trainer = _kd(YOLO("yolov8n.yaml"), v8s, data, tmp_path, kd_init="select")
    assert trainer.kd_start.mode == "select" and [t.name for t in trainer.kd_terms] == ["sl2"]
    assert float(_assert_trained(trainer, "train/kdsl2_loss")[0]["train/kdsl2_loss"]) > 0


def test_kd_scratch(data, v8s, tmp_path):
    """kd_init=none: the student keeps its random init; the columns of every term in the recipe reach results.csv."""
    trainer = _kd(YOLO("yolov8n.yaml"), v8s, data, tmp_path, kd_init="none", kd_recipe="cls_kl+cwd")
    assert trainer.kd_start.mode == "none" and not trainer.kd_start.kept
    row = _assert_trained(trainer, "train/kdkl_loss")[0]
    assert float(row["train/kdkl_loss"]) > 0 and float(row["train/kdcwd_loss"]) > 0
    assert "val/box_loss" in row  # the validator's losses go through the same dict


def test_kd_end2end_student(data, v8s, tmp_path):
    """A YOLO26 student: the stock one-to-many + one-to-one loss, with the terms on its one-to-many branch."""
    trainer = _kd(YOLO("yolo26n.yaml"), v8s, data, tmp_path, kd_init="none", kd_recipe="cls_bce+cwd")
    assert type(trainer.model.criterion).__name__ == "KDE2ELoss"
    row = _assert_trained(trainer, "train/kdcwd_loss")[0]
    assert float(row["train/kdcls_loss"]) > 0 and float(row["train/kdcwd_loss"]) > 0


def test_kd_end2end_teacher_checked(data, tmp_path):
    """A YOLO26 teacher, validated before training (releases before 8.4.140 fuse what the stock validator is given):
    the check leaves its one-to-many branch, which every batch distils, in place."""
    teacher = save_untrained("yolo26n.yaml", tmp_path / "y26.pt")
    trainer = _kd(YOLO("yolov8n.yaml"), teacher, data, tmp_path, kd_teacher_check=True, kd_recipe="cls_bce")
    assert "metrics/mAP50-95(B)" in trainer.kd_teacher_metrics
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainer.teacher.model.modules())  # not fused
    assert float(_assert_trained(trainer, "train/kdcls_loss")[0]["train/kdcls_loss"]) > 0


def test_kd_student_with_own_weights(data, v8s, tmp_path):
    """A student checkpoint keeps its weights: no start replaces them."""
    own = save_untrained("yolov8n.yaml", tmp_path / "own.pt")
    trainer = _kd(YOLO(own), v8s, data, tmp_path, kd_init="auto")
    assert trainer.kd_start.kept and trainer.kd_start.mode == "none"
    _assert_trained(trainer, "train/kdld_loss")


def test_kd_mimic(data, v8s, tmp_path):
    """A ShuffleV2 student under yolov8s: one epoch imitating the teacher's Detect inputs, then its head."""
    trainer = _kd(YOLO(SHUFFLE), v8s, data, tmp_path, kd_init="mimic", epochs=2, kd_mimic_epochs=1)
    assert trainer.kd_start.mode == "mimic" and trainer.kd_stage.epochs == 1
    rows = _assert_trained(trainer, "train/kdmim_loss", epochs=2)
    assert float(rows[0]["train/kdmim_loss"]) > 0 and float(rows[1]["train/kdmim_loss"]) == 0


def test_kd_graft(data, tmp_path):
    """The ShuffleV2 student with YOLOv9-t's neck and head under yolov9s: one epoch of backbone imitation, then the
    teacher's neck and head."""
    teacher = save_untrained("yolov9s.yaml", tmp_path / "v9s.pt")
    trainer = _kd(YOLO(ELAN), teacher, data, tmp_path, kd_init="graft", epochs=2, kd_mimic_epochs=1)
    assert trainer.kd_start.mode == "graft"
    rows = _assert_trained(trainer, "train/kdgraft_loss", epochs=2)
    assert float(rows[0]["train/kdgraft_loss"]) > 0 and float(rows[1]["train/kdgraft_loss"]) == 0


class _Stop(Exception):
    pass


def test_kd_resume(data, v8s, tmp_path):
    """A run stopped after its first checkpoint resumes with the same teacher and terms, and finishes."""
    model = YOLO("yolov8n.yaml")

    def stop(trainer):
        raise _Stop

    model.add_callback("on_model_save", stop)
    with pytest.raises(_Stop):
        _kd(model, v8s, data, tmp_path, epochs=2, kd_init="none", kd_recipe="cls_bce+cwd")
    last = tmp_path / "kd" / "weights" / "last.pt"
    resumed = YOLO(last)
    resumed.train(trainer=KDTrainer, resume=True)
    trainer = resumed.trainer
    assert trainer.start_epoch == 1 and trainer.args.teacher == str(v8s)
    assert [t.name for t in trainer.kd_terms] == ["cls_bce", "cwd"]
    rows = _assert_trained(trainer, "train/kdcwd_loss", epochs=2)
    assert float(rows[-1]["train/kdcwd_loss"]) > 0
