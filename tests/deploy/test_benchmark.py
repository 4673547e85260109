"""benchmarks/deploy.py end to end at a tiny size: every CPU row, parity against PyTorch, nothing beside the weights."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import deploy  # noqa: E402

from ultralytics_kd.deploy.measure import Latency  # noqa: E402


def _known_clock(fn, x, warmup=5, reps=30, sync=None):
    """``time_call`` with a known clock: the callable runs once, and a call on n images "takes" n, 2n, ... 10n ms."""
    fn(x)
    return Latency(tuple(len(x) * float(v) for v in range(1, 11)))  # median 5.5 n ms, p90 10 n ms


def test_deploy_benchmark_cpu_rows(data_yaml, teacher_pt, tmp_path, capsys, monkeypatch):
    weights_dir = teacher_pt.parent
    if not (weights_dir / "best.pt").exists():  # kd_gain runs are read through their best.pt
        shutil.copy(teacher_pt, weights_dir / "best.pt")
    before = sorted(p.name for p in weights_dir.iterdir())
    results = tmp_path / "kd_gain.jsonl"  # a finished kd_gain run, as benchmarks/kd_gain.py records it
    run = {"run": "default", "epochs": 40, "seed": 0, "save_dir": str(weights_dir.parent)}
    results.write_text(json.dumps({**run, "save_dir": "elsewhere"}) + "\n" + json.dumps(run) + "\n")
    monkeypatch.setattr(deploy, "KD_GAIN", results)
    monkeypatch.setattr(deploy, "time_call", _known_clock)
    with pytest.raises(SystemExit, match="python benchmarks/kd_gain.py --runs scratch --epochs 40 --seed 0"):
        deploy.resolve("kd_gain:scratch")
    with pytest.raises(SystemExit, match="no such checkpoint"):
        deploy.resolve(str(tmp_path / "missing.pt"))
    out = tmp_path / "deploy.jsonl"
    argv = ["--models", "t=kd_gain:default", "--data", str(data_yaml), "--imgsz", "64", "--batches", "1", "2"]
    deploy.main(deploy.parse_args([*argv, "--reps", "2", "--warmup", "1", "--out", str(out)]))
    rows = {r["runtime"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"pytorch-cpu", "onnxruntime-cpu"}
    pt, ort = rows["pytorch-cpu"], rows["onnxruntime-cpu"]
    assert pt["params_M"] > 1 and pt["gflops"] > 0 and pt["weights"] == str(weights_dir / "best.pt")
    assert ort["max_abs"] <= 1e-4 and ort["cosine"] > 0.99999
    for r in rows.values():  # each batch size's median and p90 in its own columns, in ms
        assert (r["b1_ms"], r["b1_p90_ms"], r["b2_ms"], r["b2_p90_ms"]) == (5.5, 10.0, 11.0, 20.0)
    assert ort["pre_ms_per_img"] == ort["post_ms_per_img"] == 5.5  # one image at batch 1
    assert abs(ort["map"] - pt["map"]) <= 0.01  # same weights, same letterbox: only the runtime differs
    assert "atol 0.0001: ok" in capsys.readouterr().out
    assert sorted(p.name for p in weights_dir.iterdir()) == before  # exports went to a temporary copy
    deploy.main(deploy.parse_args(["--table", "--batches", "1", "2", "--out", str(out)]))
    assert capsys.readouterr().out.count("| t |") == 2
