"""Latency of each student unfused, fused, and as a plain-conv twin of the fused shape, in PyTorch and ONNX Runtime.

The twin is the same YAML with every plugin block replaced by its stock Ultralytics counterpart (RepGELAN ->
RepNCSPELAN4, RepVGG -> Conv), fused by stock Ultralytics: the network a user would get without the plugin. Ratios
come from one run: each iteration calls every variant once (rotating order) and the ratio is the median of the
per-iteration ratios, so load from the rest of the machine hits the variants alike.

    python benchmarks/fusion.py --imgsz 320 640 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import io
from pathlib import Path

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

import ultralytics_kd  # noqa: F401  (registers the blocks and the fusion hook)
from ultralytics_kd.deploy.measure import time_calls

ROOT = Path(__file__).resolve().parents[1]
TWIN = {"RepGELAN": "RepNCSPELAN4", "RepVGG": "Conv"}  # plugin block -> stock block of the same fused shape


class _Head(nn.Module):
    """Return only the decoded predictions, the tensor Ultralytics exports."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()  # torch.onnx.export restores the wrapper's mode afterwards, and would leave the model training

    def forward(self, x):
        return self.model(x)[0]


def variants(path: Path, nc: int) -> dict[str, nn.Module]:
    """Unfused, fused and (when the YAML has plugin blocks with stock twins) the stock twin, all in eval mode."""
    torch.manual_seed(0)
    unfused = DetectionModel(str(path), nc=nc, verbose=False).eval()
    out = {"unfused": unfused, "fused": copy.deepcopy(unfused).fuse(verbose=False)}
    d = copy.deepcopy(unfused.yaml)  # the parsed YAML, also for stock names such as yolov9t.yaml
    rows = d["backbone"] + d["head"]
    if any(r[2] in TWIN for r in rows):
        for r in rows:
            r[2] = TWIN.get(r[2], r[2])
        out["twin"] = DetectionModel(d, nc=nc, verbose=False).eval().fuse(verbose=False)
    return out


def ort_session(model: nn.Module, imgsz: int, threads: int):
    """Export with torch.onnx (no fusion of its own: the unfused variant stays unfused) and open an ORT session."""
    import onnxruntime as ort

    f = io.BytesIO()
    x = torch.zeros(1, 3, imgsz, imgsz)
    torch.onnx.export(_Head(model), x, f, opset_version=17, input_names=["images"], dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = threads
    sess = ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])
    return lambda a: sess.run(None, {"images": a})


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rows = []
    paths = [Path(p) for p in args.models] if args.models else sorted((ROOT / "cfg" / "models").glob("*.yaml"))
    for path in paths:
        models = variants(path, args.nc)
        params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
        for imgsz in args.imgsz:
            x = torch.rand(1, 3, imgsz, imgsz)
            with torch.no_grad():
                pt = time_calls({k: _Head(m) for k, m in models.items()}, x, args.warmup, args.runs)
            sessions = {k: ort_session(m, imgsz, args.threads) for k, m in models.items()}
            ox = time_calls(sessions, x.numpy(), args.warmup, args.runs)
            for runtime, t in (("PyTorch", pt), ("ONNX Runtime", ox)):
                twin = f"{t['twin'].median:.2f}" if "twin" in t else "-"
                vs_twin = f"{t['fused'].ratio(t['twin']):.3f}" if "twin" in t else "-"
                rows.append(
                    f"| {path.stem} | {imgsz} | {runtime} | {t['unfused'].median:.2f} | {t['fused'].median:.2f} | "
                    f"{twin} | {t['unfused'].ratio(t['fused']):.2f}x | {vs_twin} |"
                )
        print(f"{path.stem}: params unfused {params['unfused']:,}, fused {params['fused']:,}", flush=True)
    print(f"\nbatch 1, {args.threads} thread(s), {args.runs} paired runs after {args.warmup} warm-up, nc={args.nc}\n")
    print("| student | imgsz | runtime | unfused ms | fused ms | twin ms | unfused/fused | fused/twin |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--nc", type=int, default=80)
    p.add_argument("--models", nargs="*", help="model YAMLs (default: every student in cfg/models), e.g. yolov9t.yaml")
    main(p.parse_args())
