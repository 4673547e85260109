"""benchmarks/gpu_check.py: the CPU dry run writes a passing line per check, the verdict catches what a GPU run may
show, and without CUDA the script exits 0 and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.mark.slow
def test_dry_run_cpu(tmp_path):
    out = tmp_path / "gpu_check.jsonl"
    assert gpu_check.main(["--dry-run-cpu", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kd, timing, *exports = rows
    onnx, int8 = [r for r in exports if r["check"] == "onnx"], [r for r in exports if r["check"] == "int8"]
    assert kd["check"] == "kd_train" and kd["status"] == "PASS" and kd["precision"] == "fp32"
    assert kd["teacher_dtype"] == "float32" and kd["teacher_device"] == kd["device"] == "cpu" and kd["amp"] is False
    assert kd["kd_losses"] and all(0 < v < 100 for v in kd["kd_losses"].values())
    assert not set(kd["kd_losses"]) & {"box_loss", "cls_loss", "dfl_loss"}
    assert timing["check"] == "timing"  # the floor is 1 + teacher forward / student step, from the row's own times
    assert timing["floor"] == pytest.approx(1 + timing["teacher_fwd_s"] / timing["student_step_s"])
    assert timing["kd_plain"] == pytest.approx(timing["kd_epoch_s"] / timing["plain_epoch_s"])
    assert sorted(r["model"] for r in onnx) == sorted(
        p.name for p in (ROOT / "ultralytics_kd/cfg/models").glob("*.yaml")
    )
    for r in onnx:
        assert r["status"] == "PASS" and r["providers_used"] == ["CPUExecutionProvider"]
        assert r["max_abs"] <= 1e-4 and r["cosine"] > 0.99999 and r["box_px"] > 0  # exported, not the same graph
    assert len(int8) == len(onnx) and all(r["model"].endswith("_int8.onnx") for r in int8)
    for r in int8:  # no CUDA here: INT8 on the CPU provider against the FP32 export of the same weights
        assert r["status"] == "PASS" and r["providers_used"] == ["CPUExecutionProvider"] and "cuda_cpu_cosine" not in r
        assert r["reference"] == r["model"].replace("_int8", "")
        assert r["cosine"] > 0.999 and 1e-4 < r["max_abs"] <= gpu_check.INT8_ATOL  # INT8, not the FP32 file itself
        assert r["int8_ms_b1"] > 0 and r["int8_ms_b32"] > r["int8_ms_b1"] and r["fp32_ms_b32"] > 0  # both batch sizes


def test_kd_verdict_names_each_problem():
    plain = {"losses": {"box_loss": 1.0, "cls_loss": 1.0, "dfl_loss": 1.0}}
    run = {"amp": True, "device": "cuda:0", "teacher_device": "cuda:0", "teacher_dtype": "bfloat16"}
    ok = gpu_check.kd_verdict("bf16", {**run, "losses": {**plain["losses"], "kd_loss": 0.3}}, plain)
    assert ok["problems"] == [] and ok["kd_losses"] == {"kd_loss": 0.3}
    bad = {**run, "teacher_dtype": "float16", "teacher_device": "cpu", "losses": {"kd_loss": float("nan"), "b": 0.0}}
    problems = gpu_check.kd_verdict("bf16", bad, plain)["problems"]
    assert problems == [
        "teacher dtype float16, expected bfloat16",
        "teacher on cpu, trainer on cuda:0",
        "kd_loss=nan",
        "b=0.0",
    ]
    assert gpu_check.kd_verdict("fp16", {**run, "amp": False, "losses": plain["losses"]}, plain)["problems"] == [
        "teacher dtype bfloat16, expected float16",
        "trainer.amp is False under amp=True",
        "no KD loss",
    ]


def _head_export(path, score_gain: float) -> None:
    """A stand-in export: images (1, 3, 8, 8) -> a (1, 4 + 2, 32) head output, boxes in pixels (x 64), scores x gain."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    gain = np.array([64, 64, 64, 64, score_gain, score_gain], np.float32).reshape(1, 6, 1)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["flat"]), helper.make_node("Mul", ["flat", "gain"], ["y"])],
        "head",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 32])],
        [numpy_helper.from_array(np.array([1, 6, 32], np.int64), "shape"), numpy_helper.from_array(gain, "gain")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_int8_check_judges_the_int8_file_against_its_fp32_one(tmp_path):
    """The INT8 verdict reads the FP32 file beside the INT8 one: scores that collapse fail it although the boxes keep
    the cosine near 1; with nothing to compare with, or no CUDA provider on a CUDA run, it fails too."""
    import onnxruntime as ort

    f, fp32 = tmp_path / "m_int8.onnx", tmp_path / "m.onnx"
    cpu = gpu_check.parse_args(["--dry-run-cpu"])
    _head_export(fp32, 1.0)
    _head_export(f, 1.0)
    ok = gpu_check.int8_row(f, cpu)
    assert ok["problems"] == [] and ok["reference"] == "m.onnx" and ok["cosine"] == pytest.approx(1.0)
    _head_export(f, 0.0)
    collapsed = gpu_check.int8_row(f, cpu)
    assert collapsed["cosine"] > 0.999 and collapsed["score_max_abs"] > 0.5  # rand(): scores up to 1 become 0
    assert collapsed["problems"] == [f"max_abs {collapsed['max_abs']:.4f} > {gpu_check.INT8_ATOL} against FP32"]
    fp32.unlink()
    assert gpu_check.int8_row(f, cpu)["problems"] == [
        "no FP32 file beside it and no CUDA provider: nothing to compare with"
    ]
    _head_export(fp32, 1.0)
    _head_export(f, 1.0)
    on_gpu = gpu_check.parse_args(["--device", "0"])  # here ONNX Runtime runs it on the CPU: the check must say so
    assert gpu_check.int8_row(f, on_gpu)["problems"] == [
        f"no CUDA provider in onnxruntime {ort.__version__} (pip install onnxruntime-gpu): ran on CPU"
    ]


def test_without_cuda_exits_zero(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "gpu_check.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "no CUDA device: nothing to check" in r.stdout and not out.exists()
