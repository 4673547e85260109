"""ONNX simplification with either simplifier keeps the fused student's outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ultralytics import YOLO

from tests.conftest import ROOT
from ultralytics_kd.export import simplify_onnx

GELAN = str(ROOT / "cfg" / "models" / "yolov9-tiny-gelan-rep.yaml")


def _run(f, x):
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("backend", ["onnxslim", "onnxsim", "auto"])
def test_simplify_keeps_outputs(backend, tmp_path):
    if backend != "auto":
        pytest.importorskip(backend)
    model = YOLO(GELAN)
    f = model.export(format="onnx", imgsz=64, simplify=False, project=str(tmp_path))
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    before, n_before = _run(f, x), len(onnx.load(f).graph.node)
    ran = simplify_onnx(f, backend)
    assert ran == (backend if backend != "auto" else "onnxslim")
    assert len(onnx.load(f).graph.node) <= n_before
    np.testing.assert_allclose(_run(f, x), before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def test_simplify_bad_backend(tmp_path):
    with pytest.raises(ValueError, match="onnxsim"):
        simplify_onnx(tmp_path / "x.onnx", backend="polygraphy")
