"""INT8 through the stock paths: QAT (ModelOpt) training and Q/DQ export of plugin students, PTQ export, KD under QAT,
and the bad-input checks of ``ultralytics_kd.deploy.int8``."""

from __future__ import annotations

import csv
import sys
from collections import Counter
from copy import deepcopy
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from tests.deploy.conftest import NAMES
from ultralytics_kd import KDTrainer
from ultralytics_kd.compat import is_qat
from ultralytics_kd.deploy import int8
from ultralytics_kd.deploy.measure import parity
from ultralytics_kd.zoo import model_yaml

pytest.importorskip("modelopt.torch.quantization")

STUDENTS = ("yolov9-tiny-gelan-rep", "yolov9-tiny-shufflev2-c2f")
IMGSZ = 64


def _images(data_yaml: Path, split: str = "train") -> torch.Tensor:
    files = sorted((data_yaml.parent / "images" / split).glob("*.jpg"))
    ims = [cv2.resize(cv2.imread(str(f)), (IMGSZ, IMGSZ))[..., ::-1] for f in files]
    return torch.from_numpy(np.ascontiguousarray(np.stack(ims))).permute(0, 3, 1, 2).float() / 255


def _student_with_data_statistics(name: str, data_yaml: Path, path: Path) -> Path:
    """A student whose BatchNorm statistics are those of the data, as after FP32 training (QAT fine-tunes such a model).

    Weights stay random: what QAT needs from training is statistics that match the images its ranges calibrate on.
    ``name`` is a plugin student, or a stock Ultralytics YAML by its file name (``"yolo11n.yaml"``).
    """
    torch.manual_seed(0)
    cfg = name if name.endswith(".yaml") else model_yaml(name)
    model = DetectionModel(str(cfg), nc=len(NAMES), verbose=False)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(_images(data_yaml))
    for m in bns:
        m.momentum = 0.03
    model.names = dict(enumerate(NAMES))
    torch.save({"model": model, "train_args": {}}, path)
    return path


def _ops(f: str | Path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(f)).graph.node)


def _quantized(f: str | Path) -> tuple[Counter, set[tuple[str, str]]]:
    """A Q/DQ file's op multiset, and ``(op, name)`` of every node that reads a dequantized tensor (an INT8 input)."""
    import onnx

    graph = onnx.load(str(f)).graph
    dequantized = {t for n in graph.node if n.op_type == "DequantizeLinear" for t in n.output}
    quantized = {
        (n.op_type, n.name)
        for n in graph.node
        if n.op_type not in {"QuantizeLinear", "DequantizeLinear"} and dequantized.intersection(n.input)
    }
    return Counter(n.op_type for n in graph.node), quantized


def _pristine_stock_int8_quantize():
    """Ultralytics' ``onnx_int8_quantize`` from a fresh load of its module: no hook of the plugin's can reach it."""
    from ultralytics.utils.export import onnx as onnx_export

    spec = spec_from_file_location("_stock_ultralytics_export_onnx", onnx_export.__file__)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.onnx_int8_quantize


@pytest.fixture(scope="module", params=STUDENTS)
def qat_run(request, data_yaml, tmp_path_factory):
    """One plugin student trained 1 epoch with quantize=8; the calibration-size warnings are kept."""
    root = tmp_path_factory.mktemp(f"qat_{request.param}")
    student = _student_with_data_statistics(request.param, data_yaml, root / "student.pt")
    warnings = []
    stock_warning = int8.LOGGER.warning
    int8.LOGGER.warning = lambda msg, *a, **k: (warnings.append(str(msg)), stock_warning(msg, *a, **k))
    try:
        YOLO(str(student)).train(
            data=str(data_yaml), epochs=1, quantize=8, project=str(root), name="qat", imgsz=IMGSZ, batch=4, nbs=4,
            workers=0, plots=False, device="cpu", amp=False, seed=0, val=False, optimizer="SGD", lr0=1e-3,
            warmup_epochs=0,
        )  # fmt: skip
    finally:
        int8.LOGGER.warning = stock_warning
    qat = root / "qat" / "weights" / "last.pt"
    return {"name": request.param, "data": data_yaml, "student": student, "qat": qat, "warnings": warnings}


@pytest.mark.slow
def test_qat_student_trains_and_keeps_finite_weights(qat_run):
    ckpt = torch.load(qat_run["qat"], map_location="cpu", weights_only=False)
    assert ckpt.get("modelopt") and ckpt["modelopt"]["ranges"]
    weights = [p for p in ckpt["model"].parameters()]
    assert all(torch.isfinite(p).all() for p in weights)
    head = ckpt["model"].model[-1]
    assert all(c[-1].weight.abs().sum() > 0 for c in head.cv3)  # a NaN step would be saved as zeros
    assert any("calibration set has 8 images, 2 batches" in w for w in qat_run["warnings"])


@pytest.mark.slow
def test_qat_export_is_qdq_without_branches(qat_run):
    """The exported graph holds Q/DQ pairs and no more Adds or Convs than the plain fused student: no RepVGG branch sum
    and no BatchNorm left."""
    plain = YOLO(str(qat_run["student"])).export(format="onnx", imgsz=IMGSZ, simplify=True)
    model = YOLO(str(qat_run["qat"]))
    assert is_qat(model.model)
    f = model.export(format="onnx", imgsz=IMGSZ, batch=4)
    ops, plain_ops = _ops(f), _ops(plain)
    assert ops["QuantizeLinear"] > 10 and ops["DequantizeLinear"] >= ops["QuantizeLinear"]
    assert ops["Add"] == plain_ops["Add"] and "BatchNormalization" not in ops
    assert ops["Conv"] == plain_ops["Conv"]
    if qat_run["name"] == "yolov9-tiny-gelan-rep":
        unfused = YOLO(str(qat_run["student"])).model  # the branches that QAT must not leave in the graph
        assert sum(1 for m in unfused.modules() if type(m).__name__ == "RepVGG") > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDENTS)
def test_qat_onnx_means_what_the_fake_quant_model_computes(name, data_yaml, tmp_path):
    """Right after the QAT preparation (stock ``prepare_qat`` through the plugin's hook), the exported Q/DQ graph run by
    ONNX Runtime's reference kernels (graph optimisations off: each QuantizeLinear/DequantizeLinear as the ONNX spec
    defines it, which is what TensorRT implements too) reproduces the fused fake-quant PyTorch model.

    Most values agree to float precision; the rest are values that land on the other side of a rounding step (the two
    sides compute x / scale in a different order, and torch's thread count changes its summation order), which random
    weights amplify layer by layer: the worst seen is cos 0.996 and one class score 0.07 apart, hence the bounds on the
    median and the 90th percentile. After 1 epoch of QAT these random-weight students blow their activations up to
    INT8 steps of ~30 and the agreement falls to cos 0.96 in some RNG states. On the trained BCCD student,
    benchmarks/int8.py gives the fake-quant and the ONNX mAP side by side.
    """
    import onnxruntime as ort
    from ultralytics.utils.torch_utils import prepare_qat as stock

    model = YOLO(str(_student_with_data_statistics(name, data_yaml, tmp_path / "student.pt")))
    x = _images(data_yaml, "train")
    model.model = int8.prepare_qat(stock, model.model.eval(), [x[:4], x[4:]] * 4, lambda b: b)
    assert is_qat(model.model)
    val = _images(data_yaml, "val")
    with torch.no_grad():
        ref = deepcopy(model.model).float().fuse().eval()(val)[0]
    f = model.export(format="onnx", imgsz=IMGSZ, batch=len(val))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(f, options, providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {"images": val.numpy()})[0])
    scores = (out[:, 4:] - ref[:, 4:]).abs().flatten()
    assert scores.median() <= 1e-3 and scores.quantile(0.9) <= 1e-2, scores.quantile(torch.tensor([0.5, 0.9, 1.0]))
    assert parity(out, ref, IMGSZ)["cosine"] >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDENTS)
def test_ptq_export_runs_its_convs_in_int8(name, data_yaml, tmp_path):
    """The stock ``format=onnx quantize=8`` path with the plugin's wider scope: ONNX Runtime fuses the body's convs into
    QLinearConv (INT8 in, INT8 out); only the head's output convs and DFL stay float."""
    import onnxruntime as ort

    student = _student_with_data_statistics(name, data_yaml, tmp_path / "student.pt")
    f = YOLO(str(student)).export(format="onnx", imgsz=IMGSZ, quantize=8, data=str(data_yaml))
    assert Path(f).name == "student_int8.onnx"
    assert _ops(f)["QuantizeLinear"] > 10
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(f, options, providers=["CPUExecutionProvider"])
    fused = _ops(tmp_path / "optimized.onnx")
    assert fused["QLinearConv"] > 10 and fused["Conv"] == 3 * 2 + 1, fused  # cv2/cv3 outputs per level, and DFL
    assert not fused["QLinearAveragePool"] and not fused["AveragePool"], fused  # AConv's pools run as INT8 convs
    x = _images(data_yaml, "val")[:1].numpy()
    out = session.run(None, {"images": x})[0]
    assert out.shape[1] == 4 + len(NAMES) and np.isfinite(out).all()


@pytest.mark.slow
def test_ptq_of_a_stock_attention_model_is_the_stock_quantization(data_yaml, tmp_path, monkeypatch):
    """A stock YOLO11 (C2PSA attention) exported with quantize=8 while the plugin is imported is quantized node for node
    as Ultralytics alone quantizes it: the plugin's wider scope is for its own students, never for stock models."""
    from ultralytics.utils.export import onnx as onnx_export

    stock_model = _student_with_data_statistics("yolo11n.yaml", data_yaml, tmp_path / "yolo11n.pt")
    assert any(type(m).__name__ == "C2PSA" for m in YOLO(str(stock_model)).model.modules())
    export = dict(format="onnx", imgsz=IMGSZ, quantize=8, data=str(data_yaml))
    with_plugin = _quantized(YOLO(str(stock_model)).export(**export))
    monkeypatch.setattr(onnx_export, "onnx_int8_quantize", _pristine_stock_int8_quantize())
    stock = _quantized(YOLO(str(stock_model)).export(**export))
    assert any(op == "MatMul" and "/attn/" in name for op, name in stock[1])  # the attention is in the comparison
    assert with_plugin[1] == stock[1], sorted(with_plugin[1] ^ stock[1])[:20]
    assert with_plugin[0] == stock[0]


def test_average_pools_become_the_depthwise_convs_they_equal():
    """Unpadded pools are rewritten and compute the same; a padded pool (not a plain conv) is left alone."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 6, "h", "w"])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 6, f"h{n}", f"w{n}"]) for n in "abc"]
    nodes = [
        helper.make_node("AveragePool", ["x"], ["a"], name="/model.3/AveragePool", kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("AveragePool", ["x"], ["b"], name="/model.5/AveragePool", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("AveragePool", ["x"], ["c"], name="padded", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "pools", [x], outs), opset_imports=[helper.make_opsetid("", 17)])
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert int8.average_pools_as_convs(model) == 2
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Conv", "AveragePool"]
    assert model.graph.node[0].name.startswith("/model.3/")  # the head's float-node rule still reads the layer
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(0).standard_normal((2, 6, 9, 11)).astype(np.float32)}
    for a, b in zip(before.run(None, feed), after.run(None, feed)):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-6)


def test_float_nodes_keep_the_decode_and_nothing_else():
    from onnx import helper

    names = [
        "/model.0/conv/Conv", "/model.0/act/Sigmoid", "/model.1/MaxPool", "/model.2/cv2.0/cv2.0.0/conv/Conv",
        "/model.2/cv2.0/cv2.0.0/act/Mul", "/model.2/cv2.0/cv2.0.2/Conv", "/model.2/dfl/conv/Conv", "/model.2/Sigmoid",
        "/model.2/Concat_3", "/NonMaxSuppression",
    ]  # fmt: skip
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name=n) for n in names], "g", [], [])
    assert int8.float_nodes(graph) == names[5:]
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [], [])
    assert int8.float_nodes(other) is None


@pytest.mark.slow
def test_kd_terms_finite_and_nonzero_under_qat(data_yaml, teacher_pt, tmp_path):
    student = _student_with_data_statistics("yolov9-tiny-shufflev2-c2f", data_yaml, tmp_path / "student.pt")
    seen = {}

    def _check(trainer):
        seen["qat"] = is_qat(trainer.model)
        seen["adapters"] = sum(p.numel() for p in trainer.kd_connectors.parameters())

    model = YOLO(str(student))
    model.add_callback("on_train_batch_end", _check)
    model.train(
        trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=1, quantize=8, project=str(tmp_path),
        name="kdqat", imgsz=IMGSZ, batch=4, nbs=4, workers=0, plots=False, device="cpu", amp=False, seed=0,
        val=False, kd_teacher_check=False,
    )  # fmt: skip
    assert seen == {"qat": True, "adapters": seen["adapters"]} and seen["adapters"] > 0
    rows = list(csv.DictReader((tmp_path / "kdqat" / "results.csv").open()))
    kd = {k.strip(): float(v) for k, v in rows[-1].items() if k.strip().startswith("train/kd")}
    assert kd and all(np.isfinite(v) and v > 0 for v in kd.values()), kd
    ckpt = torch.load(tmp_path / "kdqat" / "weights" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt.get("modelopt") and ckpt.get("kd")


# bad input ------------------------------------------------------------------------------------------------------------
def test_int8_onnx_export_without_data_fails_before_any_work(tmp_path):
    model = YOLO(str(model_yaml("yolov9-tiny-shufflev2-c2f")))
    with pytest.raises(ValueError, match="pass data=your_data.yaml"):
        model.export(format="onnx", quantize=8, imgsz=IMGSZ)
    assert not list(Path(".").rglob("*.onnx"))


def test_kd_qat_without_data_fails_before_setup(teacher_pt):
    with pytest.raises(ValueError, match="quantize=8 .* pass data="):
        KDTrainer(overrides={"model": "yolov8n.yaml", "teacher": str(teacher_pt), "quantize": 8})


def test_qat_of_a_never_trained_student_fails_before_training(data_yaml, tmp_path):
    with pytest.raises(ValueError, match="never been trained"):
        YOLO(str(model_yaml("yolov9-tiny-shufflev2-c2f"))).train(
            data=str(data_yaml), epochs=1, quantize=8, project=str(tmp_path), imgsz=IMGSZ, batch=4, workers=0,
            device="cpu", plots=False, val=False,
        )  # fmt: skip


def test_missing_modelopt_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt.torch.quantization", None)
    with pytest.raises(ImportError, match=r"ultralytics-kd\[int8\]"):
        int8.require_modelopt()


def test_block_the_quantizer_does_not_know_is_named():
    import modelopt.torch.quantization as mtq

    class Scale(nn.Module):  # computes with a parameter of its own, outside any nn.Conv2d
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1, 4, 1, 1))

        def forward(self, x):
            return x * self.gain

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Scale())
    batches = [torch.rand(2, 3, 16, 16) for _ in range(8)]

    def stock(m, loader, preprocess, n):
        return mtq.quantize(m, mtq.INT8_DEFAULT_CFG, lambda q: [q(preprocess(b)) for b in loader])

    with pytest.raises(ValueError, match=r"does not quantize 1 \(Scale\)"):
        int8.prepare_qat(stock, model, batches, lambda b: b)
    assert int8.unquantized_modules(model) == [("1", "Scale")]


def test_is_int8_accepts_every_alias():
    assert all(int8.is_int8(q) for q in (8, "8", "int8", "INT8", "w8a8"))
    assert not any(int8.is_int8(q) for q in (None, 16, "fp16", 32, "w8a16"))


def test_kd_qat_fine_tune_holds_the_rate_a_stock_run_ends_with(data_yaml, teacher_pt, tmp_path):
    """Unless the user sets them: no warm-up, a constant rate, and that rate is the optimizer's own lr x the default lrf
    (applied after optimizer=auto picked its optimizer); a user's lr0 is kept as given."""
    student = _student_with_data_statistics("yolov9-tiny-shufflev2-c2f", data_yaml, tmp_path / "student.pt")
    common = dict(model=str(student), teacher=str(teacher_pt), data=str(data_yaml), quantize=8, project=str(tmp_path))
    trainer = KDTrainer(overrides=common)
    assert (trainer.args.warmup_epochs, trainer.args.lrf, trainer._qat_lr_scale) == (0, 1.0, 0.01)
    model = DetectionModel(str(model_yaml("yolov9-tiny-shufflev2-c2f")), nc=2, verbose=False)
    optimizer = trainer.build_optimizer(model, name="SGD", lr=0.02, momentum=0.9, decay=0.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02 * 0.01] * len(optimizer.param_groups))

    given = KDTrainer(overrides={**common, "lr0": 0.003, "warmup_epochs": 1.0})
    assert (given.args.warmup_epochs, given.args.lrf, given._qat_lr_scale) == (1.0, 1.0, None)
    plain = KDTrainer(overrides={**common, "quantize": None})
    assert (plain.args.warmup_epochs, plain.args.lrf, plain._qat_lr_scale) == (3.0, 0.01, None)


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_kd_qat_resumes_quantized_at_the_same_rate(data_yaml, teacher_pt, tmp_path):
    """An interrupted KD-QAT run resumes with its quantizers, its frozen-statistics fine-tune and the same learning
    rate (the QAT rate factor is kept in the checkpoint, since the resumed args no longer say it)."""
    student = _student_with_data_statistics("yolov9-tiny-shufflev2-c2f", data_yaml, tmp_path / "student.pt")
    lrs = []

    def record(trainer):
        lrs.append([g["lr"] for g in trainer.optimizer.param_groups])

    def stop(trainer):
        raise _Stop

    model = YOLO(str(student))
    model.add_callback("on_train_batch_end", record)
    model.add_callback("on_model_save", stop)
    with pytest.raises(_Stop):
        model.train(
            trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=2, quantize=8, name="r",
            project=str(tmp_path), imgsz=IMGSZ, batch=4, nbs=4, workers=0, plots=False, device="cpu", amp=False,
            val=False, kd_teacher_check=False,
        )  # fmt: skip
    last = tmp_path / "r" / "weights" / "last.pt"
    assert torch.load(last, map_location="cpu", weights_only=False)["kd"]["qat_lr_scale"] == 0.01
    resumed = YOLO(str(last))
    resumed.add_callback("on_train_batch_end", record)
    resumed.train(trainer=KDTrainer, resume=True)
    trainer = resumed.trainer
    assert trainer.start_epoch == 1 and is_qat(trainer.model) and trainer._qat_lr_scale == 0.01
    assert (trainer.args.lrf, trainer.args.warmup_epochs) == (1.0, 0)
    assert lrs[-1] == pytest.approx(lrs[0])  # a constant rate, before and after the resume
    assert not any(m.training for m in trainer.model.modules() if isinstance(m, nn.BatchNorm2d))
