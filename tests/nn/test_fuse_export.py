"""Whole students: fusion inside model.fuse(), checkpoints (plain and safe loading) and ONNX export parity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, torch_safe_load
from ultralytics.utils import ASSETS

from tests.nn.conftest import randomize_bn, rel_err
from ultralytics_kd.nn.fuse import unfused_blocks

IMGSZ = 160


def _bus() -> torch.Tensor:
    """The bus image that ships with Ultralytics, as a 1x3xHxW float tensor in [0, 1]."""
    im = cv2.resize(cv2.imread(str(ASSETS / "bus.jpg")), (IMGSZ, IMGSZ))[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 255


def _raw(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Raw head outputs (box distributions and class logits of every anchor), before decoding."""
    preds = model(x)[1]
    return torch.cat([preds["boxes"], preds["scores"]], 1)


def _student(yaml_path: Path, seed: int = 0) -> DetectionModel:
    torch.manual_seed(seed)
    return randomize_bn(DetectionModel(str(yaml_path), nc=3, verbose=False), seed).eval()


def test_student_fuses_exactly(model_yaml):
    model = _student(model_yaml)
    n_before = sum(p.numel() for p in model.parameters())
    inputs = [torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1)), _bus()]
    with torch.no_grad():
        before = [_raw(model, x) for x in inputs]
        assert not model.is_fused()
        model.fuse(verbose=False)
        for x, ref in zip(inputs, before):
            assert rel_err(ref, _raw(model, x)) <= 1e-4
    assert model.is_fused() and not unfused_blocks(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < n_before
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.fuse(verbose=False)  # fuse twice == fuse once
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def _save_unfused(model_yaml: Path, path: Path) -> YOLO:
    yolo = YOLO(str(model_yaml))
    torch.manual_seed(0)
    randomize_bn(yolo.model)
    yolo.save(path)
    return yolo


def test_unfused_checkpoint_loads_and_fuses_later(model_yaml, tmp_path):
    ref = _save_unfused(model_yaml, tmp_path / "student.pt").model.eval()
    x = _bus()
    with torch.no_grad():
        loaded = YOLO(tmp_path / "student.pt").model.eval()
        assert unfused_blocks(loaded) or "shufflev2" in model_yaml.stem  # saved as trained, branches intact
        expected = _raw(loaded, x)
        assert rel_err(_raw(ref, x), expected) <= 1e-2  # Ultralytics stores checkpoints in fp16
        loaded.fuse(verbose=False)
        assert rel_err(expected, _raw(loaded, x)) <= 1e-4


def test_safe_load_round_trip(tmp_path):
    yaml_path = Path(__file__).parents[2] / "cfg" / "models" / "yolov9-tiny-gelan-rep.yaml"
    _save_unfused(yaml_path, tmp_path / "gelan.pt")
    ref = YOLO(tmp_path / "gelan.pt").model.eval()
    ckpt, _ = torch_safe_load(tmp_path / "gelan.pt", safe_only=True)  # weights_only=True with the allow-list
    loaded = ckpt["model"].float().eval()
    assert unfused_blocks(loaded)
    x = _bus()
    with torch.no_grad():
        assert torch.equal(_raw(ref, x), _raw(loaded, x))


def test_checkpoint_without_import(tmp_path):
    """Plain loading imports the plugin by itself; restricted loading without it fails and names the plugin."""
    yaml_path = Path(__file__).parents[2] / "cfg" / "models" / "yolov9-tiny-gelan-rep.yaml"
    _save_unfused(yaml_path, tmp_path / "gelan.pt")
    code = (
        "import sys; from ultralytics import YOLO; m = YOLO(sys.argv[1]); "
        "print('loaded', type(m.model.model[4]).__module__, 'ultralytics_kd' in sys.modules)"
    )
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "gelan.pt")], env=env, capture_output=True, text=True, timeout=120
    )
    assert "loaded ultralytics_kd.nn.blocks.rep True" in out.stdout, out.stderr[-2000:]
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "gelan.pt")],
        env={**env, "ULTRALYTICS_SAFE_LOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "ultralytics_kd" in out.stderr


def test_onnx_export_matches_and_has_no_branches(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    yaml_path = Path(__file__).parents[2] / "cfg" / "models" / "yolov9-tiny-gelan-rep.yaml"
    yolo = _save_unfused(yaml_path, tmp_path / "gelan.pt")
    f = YOLO(tmp_path / "gelan.pt").export(format="onnx", imgsz=IMGSZ, simplify=True)
    graph = onnx.load(f).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    parallel = [n.name for n in graph.node if n.op_type == "Add" and all(producers.get(i) == "Conv" for i in n.input)]
    assert not parallel, f"Add of parallel conv branches left in the graph: {parallel[:5]}"
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)

    x = _bus()
    model = yolo.model.eval()
    with torch.no_grad():
        model.fuse(verbose=False)
        ref = model(x)[0]
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert rel_err(ref, out) <= 1e-4


def test_engine_export_without_gpu_is_clear(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the TensorRT path is exercised by the deploy tests")
    yaml_path = Path(__file__).parents[2] / "cfg" / "models" / "yolov9-tiny-gelan-rep.yaml"
    _save_unfused(yaml_path, tmp_path / "gelan.pt")
    with pytest.raises(Exception, match="(?i)cuda|gpu"):
        YOLO(tmp_path / "gelan.pt").export(format="engine", imgsz=64)


def test_fused_graph_equals_stock_twin():
    """The fused student is the same network as its plain stock twin: same ops, same conv shapes, in order.

    This is what makes latency parity with the twin hold by construction (benchmarks/fusion.py measures it).
    """
    import io
    import sys

    onnx = pytest.importorskip("onnx")
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from fusion import _Head, variants

    graphs = {}
    for k, m in variants(Path(__file__).parents[2] / "cfg" / "models" / "yolov9-tiny-gelan-rep.yaml", 3).items():
        f = io.BytesIO()
        torch.onnx.export(_Head(m), torch.zeros(1, 3, 64, 64), f, opset_version=17, dynamo=False)
        g = onnx.load_from_string(f.getvalue()).graph
        shapes = {i.name: tuple(i.dims) for i in g.initializer}
        graphs[k] = [(n.op_type, shapes.get(n.input[1]) if n.op_type == "Conv" else None) for n in g.node]
    assert graphs["fused"] == graphs["twin"]
    assert len(graphs["unfused"]) > len(graphs["fused"])
