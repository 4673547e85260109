"""benchmarks/deploy.py end to end at a tiny size: every CPU row, parity against PyTorch, nothing beside the weights."""

from __future__ import annotations

import json
import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import deploy  # noqa: E402


def test_deploy_benchmark_cpu_rows(data_yaml, teacher_pt, tmp_path, capsys):
    weights_dir = teacher_pt.parent
    before = sorted(p.name for p in weights_dir.iterdir())
    out = tmp_path / "deploy.jsonl"
    argv = ["--models", f"t={weights_dir}/las*.pt", "--data", str(data_yaml), "--imgsz", "64", "--batches", "1", "2"]
    deploy.main(deploy.parse_args([*argv, "--reps", "2", "--warmup", "1", "--out", str(out)]))
    rows = {r["runtime"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"pytorch-cpu", "onnxruntime-cpu"}
    pt, ort = rows["pytorch-cpu"], rows["onnxruntime-cpu"]
    assert pt["params_M"] > 1 and pt["gflops"] > 0 and pt["weights"].endswith("last.pt")
    assert ort["max_abs"] <= 1e-4 and ort["cosine"] > 0.99999
    assert all(r["b1_ms"] > 0 and r["b2_ms"] > 0 and r["b2_p90_ms"] >= r["b2_ms"] for r in rows.values())
    assert ort["pre_ms_per_img"] > 0 and ort["post_ms_per_img"] > 0
    assert abs(ort["map"] - pt["map"]) <= 0.01  # same weights, same letterbox: only the runtime differs
    assert "atol 0.0001: ok" in capsys.readouterr().out
    assert sorted(p.name for p in weights_dir.iterdir()) == before  # exports went to a temporary copy
    deploy.main(deploy.parse_args(["--table", "--batches", "1", "2", "--out", str(out)]))
    assert capsys.readouterr().out.count("| t |") == 2
