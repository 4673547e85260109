"""Deploy runners: the ONNX runner against Ultralytics' own ONNX predictor and PyTorch, engine headers, input checks,
and the engine-export preflight. Engine builds and the TensorRT runner need a GPU: those tests skip without one."""

from __future__ import annotations

import contextlib
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ultralytics import YOLO

from tests.conftest import ROOT
from ultralytics_kd.deploy import EngineRunner, OnnxRunner, precision_api, preflight, read_engine_header

GELAN = str(ROOT / "cfg" / "models" / "yolov9-tiny-gelan-rep.yaml")
HAS_TRT = torch.cuda.is_available() and __import__("importlib").util.find_spec("tensorrt") is not None
needs_gpu = pytest.mark.skipif(not HAS_TRT, reason="needs a CUDA GPU and tensorrt (pip install 'ultralytics-kd[trt]')")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A YAML-built RepVGG student with non-trivial BN statistics, so fusion has something to fold."""
    torch.manual_seed(0)
    model = YOLO(GELAN)
    for m in model.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    for branch in model.model.model[-1].cv3:  # stock init scores ~1e-4; zero class bias -> scores near 0.5, boxes kept
        branch[-1].bias.data.zero_()
    return model


@pytest.fixture(scope="module")
def onnx_file(student, tmp_path_factory):
    with contextlib.chdir(tmp_path_factory.mktemp("onnx")):  # a YAML-built model exports into the working directory
        return str(Path(student.export(format="onnx", imgsz=64)).resolve())


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(80, 120), (100, 60)]):
        im = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(im, (10, 10), (w // 2, h // 2), (255, 255, 255), -1)
        paths.append(str(tmp_path / f"im{i}.jpg"))
        cv2.imwrite(paths[-1], im)
    return paths


def test_onnx_runner_matches_stock_predictor(onnx_file, images):
    """Same boxes, scores and classes as YOLO("x.onnx").predict: the runner reuses Ultralytics' pre/post-processing."""
    ours = OnnxRunner(onnx_file).predict(images, conf=0.001)
    stock = YOLO(onnx_file, task="detect").predict(images, conf=0.001, imgsz=64, verbose=False)
    assert len(ours) == len(stock) == 2
    for a, b in zip(ours, stock):
        assert len(a.boxes) == len(b.boxes) > 0
        np.testing.assert_allclose(a.boxes.xyxy.numpy(), b.boxes.xyxy.cpu().numpy(), atol=1e-3)
        np.testing.assert_allclose(a.boxes.conf.numpy(), b.boxes.conf.cpu().numpy(), atol=1e-5)
        np.testing.assert_array_equal(a.boxes.cls.numpy(), b.boxes.cls.cpu().numpy())
        assert a.orig_shape == b.orig_shape and a.names == b.names


def test_onnx_runner_raw_parity_with_fused_pytorch(student, onnx_file):
    runner = OnnxRunner(onnx_file)
    assert runner.imgsz == (64, 64) and runner.batch == 1 and not runner.dynamic and len(runner.names) == 80
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = student.model.fuse().eval()
    with torch.no_grad():
        ref = model(x)[0]
    out = runner(x)[0]  # batch 3 through a batch-1 export: three chunks
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_static_batch_chunks_and_padding(student, tmp_path):
    f = student.export(format="onnx", imgsz=64, batch=2, project=str(tmp_path), name="b2")
    runner = OnnxRunner(f)
    assert runner.batch == 2
    x = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # 2 + 2 + (1 padded to 2)
    out = runner(x)[0]
    one_by_one = torch.cat([runner(torch.cat([x[i : i + 1], x[i : i + 1]]))[0][:1] for i in range(5)])
    assert out.shape[0] == 5
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "x, err, match",
    [
        (torch.rand(1, 3, 96, 96), ValueError, r"does not match the exported imgsz \(64, 64\).*dynamic=True"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), TypeError, "divide uint8 images by 255"),
        (torch.rand(3, 64, 64), ValueError, "BCHW batch with 3 channels"),
        ([[0.0]], TypeError, "got list"),
    ],
)
def test_runner_input_errors(onnx_file, x, err, match):
    with pytest.raises(err, match=match):
        OnnxRunner(onnx_file)(x)


def test_dynamic_onnx_takes_other_sizes(student, tmp_path):
    f = student.export(format="onnx", imgsz=64, dynamic=True, project=str(tmp_path), name="dyn")
    runner = OnnxRunner(f)
    assert runner.dynamic and runner.batch is None
    assert runner(torch.rand(2, 3, 96, 128))[0].shape == (2, 84, 252)  # 12*16 + 6*8 + 3*4 anchors


def _write_engine(path, meta: dict | None, payload: bytes = b"\x00\x01not-a-real-engine" * 8):
    """The layout Ultralytics' onnx2engine writes: 4-byte little-endian length, JSON metadata, engine bytes."""
    with open(path, "wb") as f:
        if meta is not None:
            s = json.dumps(meta).encode()
            f.write(len(s).to_bytes(4, byteorder="little", signed=True))
            f.write(s)
        f.write(payload)
    return path


def test_engine_header(tmp_path):
    meta = {"imgsz": [64, 64], "names": {"0": "rbc", "1": "wbc"}, "stride": 32, "tensorrt": "10.13.3", "batch": 1}
    offset, got = read_engine_header(_write_engine(tmp_path / "a.engine", meta))
    assert offset == 4 + len(json.dumps(meta).encode())
    assert got["imgsz"] == [64, 64] and got["names"] == {0: "rbc", 1: "wbc"} and got["tensorrt"] == "10.13.3"
    assert read_engine_header(_write_engine(tmp_path / "bare.engine", None)) == (0, {})
    with pytest.raises(FileNotFoundError, match="yolo-kd export model=best.pt format=engine"):
        read_engine_header(tmp_path / "missing.engine")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_engine_runner_names_the_install(tmp_path):
    f = _write_engine(tmp_path / "a.engine", {"imgsz": [64, 64]})
    with pytest.raises(ImportError, match=r'pip install "ultralytics-kd\[trt\]"'):
        EngineRunner(f)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_engine_export_on_cpu_fails_first(student, tmp_path):
    """The preflight runs before Ultralytics' exporter picks device 0 or writes an ONNX file."""
    from ultralytics_kd import cli

    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU.*use format=onnx here"):
        student.export(format="engine", imgsz=64, project=str(tmp_path))
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        cli.entrypoint(["export", f"model={GELAN}", "format=trt", "imgsz=64"])  # the 'trt' alias too
    assert not list(tmp_path.rglob("*.onnx"))


@pytest.mark.parametrize(
    "version, args, match",
    [
        ("10.13.0", {"quantize": 8}, "pass data=your_data.yaml"),
        ("11.1.0", {"quantize": 16}, "nvidia-modelopt"),
        ("11.1.0", {"device": "dla:0"}, "DLA is not available in TensorRT 11.1.0"),
    ],
)
def test_preflight_by_tensorrt_version(monkeypatch, version, args, match):
    """The version-dependent rules, with this machine's GPU and TensorRT replaced by stand-ins."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "modelopt" else object())
    with pytest.raises((ValueError, ImportError), match=match):
        preflight(types.SimpleNamespace(**{"format": "engine", "device": "0", "data": None, **args}))
    preflight(types.SimpleNamespace(format="onnx", quantize=8, data=None))  # other formats are not checked


def test_precision_api():
    assert precision_api("10.13.3.9") == {"fp16": "builder-flag", "int8": "calibrator", "dla": True, "runner": True}
    assert precision_api("11.0.0")["int8"] == "modelopt-qdq" and not precision_api("11.0.0")["dla"]
    assert not precision_api("8.4.3")["runner"] and precision_api("8.6.1")["runner"]


def test_cli_export_passes_through_with_blocks(tmp_path):
    """yolo-kd export parses a plugin YAML (blocks registered) and writes an ONNX whose runner works."""
    from ultralytics_kd import cli

    cli.entrypoint(["export", f"model={GELAN}", "format=onnx", "imgsz=64"])
    f = next(tmp_path.glob("*.onnx"))
    assert OnnxRunner(f)(torch.rand(1, 3, 64, 64))[0].shape == (1, 84, 84)


# GPU: TensorRT engines of the fused student. CI and CPU sessions skip these.


@needs_gpu
@pytest.mark.parametrize("quantize", [None, 16])
def test_engine_parity_and_predict(student, images, tmp_path, quantize):
    f = student.export(format="engine", imgsz=64, quantize=quantize, device=0, project=str(tmp_path), name="e")
    runner = EngineRunner(f)
    assert runner.metadata["tensorrt"] and runner.metadata["compute_capability"]
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = student.model.fuse().eval().to("cuda:0")(x.cuda())[0].float()
    out = runner(x)[0].float()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert cos >= (0.999 if quantize == 16 else 0.99999), cos
    ours = runner.predict(images, conf=0.001)
    stock = YOLO(f, task="detect").predict(images, conf=0.001, imgsz=64, verbose=False, device=0)
    for a, b in zip(ours, stock):
        assert len(a.boxes) == len(b.boxes)


@needs_gpu
def test_engine_no_growth_over_many_calls(student, tmp_path):
    runner = EngineRunner(student.export(format="engine", imgsz=64, device=0, project=str(tmp_path), name="m"))
    x = torch.rand(1, 3, 64, 64, device="cuda:0")
    for _ in range(20):
        runner(x)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(2000):
        runner(x)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@needs_gpu
def test_engine_built_elsewhere_is_refused(student, tmp_path):
    f = student.export(format="engine", imgsz=64, device=0, project=str(tmp_path), name="x")
    offset, meta = read_engine_header(f)
    payload = open(f, "rb").read()[offset:]
    other = _write_engine(tmp_path / "o.engine", {**meta, "tensorrt": "9.0.0", "compute_capability": "7.2"}, payload)
    with pytest.raises(RuntimeError, match="built with TensorRT 9.0.0.*compute capability 7.2.*rebuild it here"):
        EngineRunner(other)
