"""The one latency timer and the one parity check: known values on tiny inputs."""

from __future__ import annotations

import pytest
import torch

from ultralytics_kd.deploy.measure import Latency, parity, parity_ok, parity_rule, time_call, time_calls


def test_latency_statistics():
    t = Latency(tuple(float(v) for v in range(1, 11)))  # 1 .. 10 ms
    assert t.median == 5.5 and t.p90 == 10.0
    assert Latency((2.0, 4.0, 6.0)).ratio(Latency((1.0, 1.0, 2.0))) == 3.0  # per-call ratios 2, 4, 3


def test_time_calls_warms_up_rotates_and_syncs():
    calls, syncs = [], []
    fns = {k: (lambda x, k=k: calls.append((k, x))) for k in "abc"}
    out = time_calls(fns, 7, warmup=2, reps=3, sync=lambda: syncs.append(1))
    assert calls[:6] == [(k, 7) for k in "abcabc"]  # warm-up: every callable, untimed
    assert [k for k, _ in calls[6:]] == list("abc" + "bca" + "cab")  # each iteration starts one later
    assert len(syncs) == 2 * 9  # before and after every timed call, none around warm-up
    assert set(out) == {"a", "b", "c"} and all(len(t.ms) == 3 and min(t.ms) >= 0 for t in out.values())
    assert len(time_call(lambda x: None, None, warmup=0, reps=4).ms) == 4


def test_parity_boxes_relative_scores_absolute():
    ref = torch.zeros(1, 6, 5)  # 4 box rows + 2 class scores, 5 anchors
    ref[:, :4] = 100.0
    out = ref.clone()
    out[0, 0, 0] += 0.032  # 0.032 px on a 320 px image: 1e-4 in image units
    out[0, 5, 1] += 2e-5
    d = parity(out, ref, imgsz=320)
    assert d["box_px"] == pytest.approx(0.032, abs=1e-5) and d["score_max_abs"] == pytest.approx(2e-5, abs=1e-7)
    assert d["max_abs"] == pytest.approx(1e-4, rel=1e-3) and d["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert parity_ok({**d, "max_abs": 9e-5}, "onnxruntime-cpu") and not parity_ok(
        {**d, "max_abs": 2e-4}, "onnxruntime-cpu"
    )
    assert parity_ok({"max_abs": 5.0, "cosine": 0.9995}, "trt-fp16")  # reduced precision: cosine only
    assert not parity_ok({"max_abs": 0.0, "cosine": 0.99}, "trt-int8")
    assert parity_rule("onnxruntime-cpu") == "atol 0.0001" and parity_rule("trt-fp16") == "cos>=0.999"
