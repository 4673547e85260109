"""Deployment side by side: teacher, scratch student and distilled student, fused, in every runtime this machine has.

For each model: parameters and GFLOPs; batch-1 and batch-N latency (median and p90 after warm-up, the model call alone)
in PyTorch, ONNX Runtime on CPU and, where a GPU and TensorRT are present, TensorRT FP32/FP16/INT8; pre- and
post-processing timed apart; mAP50-95 of each format on the validation split (static shapes, no rect batching, so the
runtime is the only difference); raw-output parity of each export against PyTorch: max abs difference of class scores
and of image-relative boxes (pixels / imgsz), the largest box difference in pixels, and cosine similarity.

    python benchmarks/deploy.py --data ../shared/data/bccd/data.yaml --imgsz 320 --threads 1 \\
        --models teacher=../shared/teachers/bccd-yolov9s-320.pt \\
                 scratch=kd_gain:scratch distilled=kd_gain:default

``kd_gain:<run>`` is the latest finished 40-epoch seed-0 run of that name in benchmarks/results/kd_gain.jsonl. Each
model is copied to a temporary folder first, so no export lands beside your weights. Rows go to ``--out`` (JSON
lines); ``--table`` prints them as markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.data.utils import check_det_dataset
from ultralytics.utils.torch_utils import get_flops

import ultralytics_kd  # noqa: F401  (registers the blocks and the fusion hook)
from ultralytics_kd.deploy import EngineRunner, OnnxRunner
from ultralytics_kd.deploy.measure import Latency, parity, parity_ok, parity_rule, time_call

ROOT = Path(__file__).resolve().parents[1]
KD_GAIN = ROOT / "benchmarks" / "results" / "kd_gain.jsonl"


def resolve(spec: str) -> Path:
    """A checkpoint path, or ``kd_gain:<run>[:<epochs>[:<seed>]]`` for the best.pt of the latest finished
    benchmarks/kd_gain.py run of that name (40 epochs and seed 0 unless given): its results file only lists finished
    runs, so a run still training is never picked up."""
    if spec.startswith("kd_gain:"):
        name, epochs, seed = ([*spec.split(":")[1:], "40", "0"])[:3]
        rows = [json.loads(x) for x in KD_GAIN.read_text().splitlines() if x.strip()] if KD_GAIN.exists() else []
        rows = [r for r in rows if r["run"] == name and r.get("epochs") == int(epochs) and r.get("seed") == int(seed)]
        path = Path(rows[-1]["save_dir"]) / "weights" / "best.pt" if rows else None
        if path is None or not path.is_file():
            raise SystemExit(
                f"{spec}: no finished kd_gain run '{name}' ({epochs} epochs, seed {seed}) with weights here; "
                f"train it with: python benchmarks/kd_gain.py --runs {name} --epochs {epochs} --seed {seed}"
            )
        return path
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"{spec}: no such checkpoint; pass name=path pairs, or name=kd_gain:<run> for a benchmark run")
    return path


def _latency_cols(batch: int, latency: Latency) -> dict[str, float]:
    """The row's median and p90 columns for one batch size."""
    return {f"b{batch}_ms": latency.median, f"b{batch}_p90_ms": latency.p90}


def val_map(model: str | Path, data: str, imgsz: int, device, project: str) -> tuple[float, float]:
    """mAP50-95 and mAP50 on the val split, batch 1 and square letterbox for every format alike."""
    m = YOLO(str(model), task="detect")
    r = m.val(data=data, imgsz=imgsz, batch=1, rect=False, device=device, plots=False, verbose=False, project=project)
    return float(r.box.map), float(r.box.map50)


def val_images(data: str, n: int) -> list[np.ndarray]:
    """The first ``n`` val images (BGR), repeated if the split is smaller, for pre/post-processing timing."""
    d = check_det_dataset(data)
    val = d["val"] if isinstance(d["val"], list) else [d["val"]]
    files = sorted(f for v in val for f in Path(v).rglob("*") if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
    return [cv2.imread(str(files[i % len(files)])) for i in range(n)]


def prepost_ms(runner: OnnxRunner, images: list[np.ndarray], reps: int) -> tuple[float, float]:
    """Median ms per image of letterbox + normalise, and of NMS + box scaling + Results, for one batch of images."""
    im = runner.preprocess(images)
    y = runner(im)
    paths = ["x.jpg"] * len(images)
    pre = time_call(runner.preprocess, images, 1, reps).median
    post = time_call(lambda ims: runner.postprocess(y, im, ims, paths, 0.25, 0.7, 300), images, 1, reps).median
    return pre / len(images), post / len(images)


def bench_model(name: str, path: Path, args, out_dir: Path) -> list[dict]:
    """Every runtime row for one model."""
    local = out_dir / path.name  # exports land beside the weights: work on a copy, never beside the user's files
    shutil.copy(path, local)
    yolo = YOLO(str(local))
    model = yolo.model.fuse().eval()
    base = {
        "model": name,
        "weights": str(path),
        "local": str(local),
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": get_flops(model, args.imgsz),
        "imgsz": args.imgsz,
        "threads": args.threads,
        "date": datetime.now().isoformat(timespec="seconds"),
    }
    cpu_x = {
        b: torch.rand(b, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(b)) for b in args.batches
    }
    images = val_images(args.data, max(args.batches))
    rows = []

    # PyTorch on CPU: the reference for parity
    with torch.no_grad():
        ref = {b: model(x)[0] for b, x in cpu_x.items()}
        row = {**base, "runtime": "pytorch-cpu"}
        for b, x in cpu_x.items():
            row.update(_latency_cols(b, time_call(model, x, args.warmup, args.reps)))
    row["map"], row["map50"] = val_map(local, args.data, args.imgsz, "cpu", str(out_dir / "val"))
    rows.append(row)

    # ONNX Runtime on CPU, one static export per batch size
    for b in args.batches:
        with contextlib.chdir(out_dir):  # a YAML-built model exports into the working directory
            f = Path(yolo.export(format="onnx", imgsz=args.imgsz, batch=b, verbose=False)).resolve()
        f = f.rename(out_dir / f"{name}-b{b}.onnx")
        runner = OnnxRunner(f, threads=args.threads)
        if b == min(args.batches):
            row = {**base, "runtime": "onnxruntime-cpu", **parity(runner(cpu_x[b])[0], ref[b], args.imgsz)}
            row["map"], row["map50"] = val_map(f, args.data, args.imgsz, "cpu", str(out_dir / "val"))
            row["pre_ms_per_img"], row["post_ms_per_img"] = prepost_ms(runner, images[:b], args.reps)
        row.update(_latency_cols(b, time_call(runner.forward, cpu_x[b], args.warmup, args.reps)))
    rows.append(row)

    if torch.cuda.is_available():
        rows += bench_gpu(base, yolo, model, cpu_x, args, out_dir)
    return rows


def bench_gpu(base: dict, yolo: YOLO, model, cpu_x: dict, args, out_dir: Path) -> list[dict]:
    """PyTorch on the GPU and TensorRT FP32/FP16/INT8 engines, where tensorrt is installed."""
    rows, sync = [], torch.cuda.synchronize
    gpu = model.to("cuda:0")
    gpu_x = {b: x.to("cuda:0") for b, x in cpu_x.items()}
    with torch.no_grad():
        ref = {b: gpu(x)[0] for b, x in gpu_x.items()}
        row = {**base, "runtime": "pytorch-cuda", "device": torch.cuda.get_device_name(0)}
        for b, x in gpu_x.items():
            row.update(_latency_cols(b, time_call(gpu, x, args.warmup, args.reps, sync)))
    row["map"], row["map50"] = val_map(base["local"], args.data, args.imgsz, 0, str(out_dir / "val"))
    rows.append(row)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print('TensorRT rows skipped: pip install "ultralytics-kd[trt]"')
        return rows
    for quantize in args.quantize:
        label = {32: "trt-fp32", 16: "trt-fp16", 8: "trt-int8"}[quantize]
        row = {**base, "runtime": label, "device": torch.cuda.get_device_name(0)}
        for b in args.batches:
            kw = {"data": args.data} if quantize == 8 else {}
            q = None if quantize == 32 else quantize
            with contextlib.chdir(out_dir):
                f = Path(yolo.export(format="engine", imgsz=args.imgsz, batch=b, quantize=q, device=0, **kw)).resolve()
            f = f.rename(out_dir / f"{base['model']}-{label}-b{b}.engine")
            runner = EngineRunner(f)
            if b == min(args.batches):
                row.update(parity(runner(gpu_x[b])[0], ref[b], args.imgsz))
                row["map"], row["map50"] = val_map(f, args.data, args.imgsz, 0, str(out_dir / "val"))
            latency = time_call(runner.forward, gpu_x[b].to(runner.dtype), args.warmup, args.reps, sync)
            row.update(_latency_cols(b, latency))
        rows.append(row)
    return rows


def table(rows: list[dict], batches: list[int]) -> str:
    """Markdown, one line per model and runtime, with the parity verdicts."""
    cols = (
        ["model", "runtime", "params_M", "gflops"] + [f"b{b}_ms" for b in batches] + [f"b{b}_p90_ms" for b in batches]
    )
    cols += ["pre_ms_per_img", "post_ms_per_img", "map", "map50", "max_abs", "box_px", "cosine"]
    lines = ["| " + " | ".join(cols) + " | parity |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(
                f"{v:.4g}"
                if isinstance(v, float) and c in ("max_abs", "box_px", "cosine")
                else f"{v:.3f}"
                if isinstance(v, float) and c.startswith("map")
                else f"{v:.1f}"
                if isinstance(v, float)
                else str(v)
            )
        ok = ""
        if "max_abs" in r:
            ok = f"{parity_rule(r['runtime'])}: {'ok' if parity_ok(r, r['runtime']) else 'FAIL'}"
        lines.append("| " + " | ".join(cells) + f" | {ok} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.table:
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        print(table(rows, args.batches))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
        import ultralytics.utils.torch_utils as tu  # select_device resets torch's thread count to this on every val

        tu.NUM_THREADS = args.threads
    models = dict(m.split("=", 1) for m in args.models)
    paths = {k: resolve(v) for k, v in models.items()}  # all checked before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in paths.items():
            d = Path(tmp) / name
            d.mkdir()
            for row in bench_model(name, path, args, d):
                rows.append(row)
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(table(rows, args.batches))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        nargs="+",
        default=[
            "teacher=../shared/teachers/bccd-yolov9s-320.pt",
            "scratch=runs/kd_gain/scratch-e40-s0-*/weights/best.pt",
            "distilled=runs/kd_gain/default-e40-s0-*/weights/best.pt",
        ],
        help="name=path pairs; paths may be globs",
    )
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bccd" / "data.yaml"))
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--quantize", type=int, nargs="+", default=[32, 16, 8], help="TensorRT precisions (GPU only)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch and ONNX Runtime (0 = default)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "deploy.jsonl"))
    p.add_argument("--table", action="store_true", help="print the rows in --out as markdown and exit")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
