"""INT8 students side by side: FP32 ONNX, INT8 PTQ ONNX, INT8 QAT ONNX and INT8 KD-QAT ONNX of one trained student.

- FP32: the fused student exported with ``format=onnx``.
- PTQ: ``format=onnx quantize=8 data=...`` (ONNX Runtime static quantization, calibrated on the val split).
- QAT: Ultralytics' own ``train(quantize=8)`` (ModelOpt) for ``--epochs`` from the student, no teacher.
- KD-QAT: the same fine-tune with ``trainer=KDTrainer`` and ``--teacher`` (the default recipe for a student with weights
  of its own; BatchNorm statistics frozen under QAT).
- QAT with BatchNorm frozen: KDTrainer with the default recipe's two weights at 0, to tell the teacher's part of the
  KD-QAT row from the frozen statistics' part.

QAT and KD-QAT share every hyperparameter (``--optimizer``, ``--lr0`` held constant, no warm-up, ``--seed``) and are
exported from their ``best.pt``. Each row gives mAP50-95 and mAP50 on ``--split`` (ONNX Runtime, batch 1), ONNX Runtime
CPU latency at batch 1 and ``--big-batch`` (all four sessions timed in the same loop, so ``x FP32`` is a ratio measured
in one run) and the file size; the QAT rows also give the fake-quant PyTorch model's mAP50-95 (``pt``), which the
INT8 ONNX should match.

    python benchmarks/int8.py --student runs/kd_gain/default-e40-s0-*/weights/best.pt \\
        --data ../shared/data/bccd/data.yaml --teacher ../shared/teachers/bccd-yolov9s-320.pt --threads 1

Rows go to ``--out`` (JSON lines); ``--table`` prints them as markdown.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from ultralytics import YOLO

import ultralytics_kd  # noqa: F401  (blocks, fusion and INT8 hooks)
from ultralytics_kd import KDTrainer
from ultralytics_kd.deploy.measure import time_calls

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("fp32", "ptq", "qat", "qatbn", "kdqat")
LABELS = {
    "fp32": "FP32 ONNX",
    "ptq": "INT8 PTQ ONNX",
    "qat": "INT8 QAT ONNX",
    "qatbn": "INT8 QAT ONNX, BatchNorm frozen (KDTrainer, KD weights 0)",
    "kdqat": "INT8 KD-QAT ONNX",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", help="a trained FP32 student checkpoint")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bccd" / "data.yaml"))
    p.add_argument("--teacher", default=str(ROOT.parent / "shared" / "teachers" / "bccd-yolov9s-320.pt"))
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--epochs", type=int, default=10, help="QAT and KD-QAT fine-tune epochs")
    p.add_argument("--optimizer", default="AdamW")
    p.add_argument("--lr0", type=float, default=1.4e-5, help="constant learning rate of both fine-tunes")
    p.add_argument("--batch", type=int, default=16, help="fine-tune batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test")
    p.add_argument("--big-batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8.jsonl"))
    p.add_argument("--table", action="store_true", help="print the results in --out as markdown and exit")
    return p.parse_args()


def fine_tune(
    student: Path, work: Path, name: str, args: argparse.Namespace, teacher: str | None, **kd_settings
) -> Path:
    """QAT fine-tune (``teacher`` set: with KDTrainer and ``kd_settings``); return the run's best.pt."""
    kd = {"trainer": KDTrainer, "teacher": teacher, **kd_settings} if teacher else {}
    YOLO(str(student)).train(
        data=args.data, epochs=args.epochs, quantize=8, imgsz=args.imgsz, batch=args.batch, workers=1,
        optimizer=args.optimizer, lr0=args.lr0, lrf=1.0, warmup_epochs=0, seed=args.seed, deterministic=True,
        project=str(work), name=name, plots=False, device="cpu", amp=False, **kd,
    )  # fmt: skip
    return work / name / "weights" / "best.pt"


def export(weights: Path, args: argparse.Namespace, **kwargs) -> Path:
    return Path(YOLO(str(weights)).export(format="onnx", imgsz=args.imgsz, dynamic=True, simplify=True, **kwargs))


def main() -> None:
    args = parse_args()
    if args.table:
        print_table(Path(args.out))
        return
    torch.set_num_threads(args.threads)
    rows = [r for r in args.rows.split(",") if r]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        student = work / "student.pt"  # a copy: no export lands beside the user's weights
        shutil.copy(args.student, student)
        files = {}
        if "fp32" in rows:
            files["fp32"] = export(student, args).rename(work / "fp32.onnx")  # PTQ exports to and removes student.onnx
        if "ptq" in rows:
            files["ptq"] = export(student, args, quantize=8, data=args.data)
        trained = {}
        if "qat" in rows:
            trained["qat"] = fine_tune(student, work, "qat", args, None)
        if "qatbn" in rows:  # KDTrainer's QAT without the teacher's signal: what freezing BatchNorm alone does
            trained["qatbn"] = fine_tune(student, work, "qatbn", args, args.teacher, kd_weights=[0.0, 0.0])
        if "kdqat" in rows:
            trained["kdqat"] = fine_tune(student, work, "kdqat", args, args.teacher)
        files.update({k: export(w, args) for k, w in trained.items()})
        results = {k: measure_accuracy(f, args) for k, f in files.items()}
        for k, w in trained.items():  # the fake-quant PyTorch model: what ONNX Runtime's INT8 kernels should match
            results[k]["pt_map"] = measure_accuracy(w, args, batch=16)["map"]
        latency = measure_latency(files, args)
        stamp = datetime.now().isoformat(timespec="seconds")
        with open(args.out, "a") as fh:
            for k, f in files.items():
                row = {
                    "row": k, "student": str(args.student), "imgsz": args.imgsz, "epochs": args.epochs,
                    "optimizer": args.optimizer, "lr0": args.lr0, "seed": args.seed, "split": args.split,
                    "threads": args.threads, **results[k], **latency[k], "size_mb": f.stat().st_size / 2**20,
                    "time": stamp,
                }  # fmt: skip
                fh.write(json.dumps(row) + "\n")
                print(json.dumps(row))
    print_table(Path(args.out))


def measure_accuracy(f: Path, args: argparse.Namespace, batch: int = 1) -> dict:
    m = YOLO(str(f), task="detect").val(
        data=args.data, split=args.split, imgsz=args.imgsz, batch=batch, plots=False, device="cpu", verbose=False
    )
    return {"map": float(m.box.map), "map50": float(m.box.map50)}


def measure_latency(files: dict[str, Path], args: argparse.Namespace) -> dict[str, dict]:
    """ONNX Runtime CPU latency of every file at batch 1 and ``--big-batch``, timed in one loop per batch size."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = args.threads
    sessions = {k: ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"]) for k, f in files.items()}
    out = {k: {} for k in files}
    for b in (1, args.big_batch):
        x = np.random.default_rng(0).random((b, 3, args.imgsz, args.imgsz), dtype=np.float32)
        fns = {k: (lambda im, s=s: s.run(None, {"images": im})) for k, s in sessions.items()}
        t = time_calls(fns, x, warmup=3, reps=args.reps)
        for k in files:
            out[k][f"ms_b{b}"] = t[k].median
            if "fp32" in t:
                out[k][f"speedup_b{b}"] = t["fp32"].ratio(t[k])
    return out


def print_table(out: Path) -> None:
    if not out.is_file():
        print(f"no results in {out}")
        return
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    runs: dict[str, list[dict]] = {}
    for r in rows:
        runs.setdefault(r["time"], []).append(r)
    for stamp, rs in runs.items():
        r0 = rs[0]
        fp32 = next((r["map"] for r in rs if r["row"] == "fp32"), None)
        b = next((k.removeprefix("ms_b") for k in r0 if k.startswith("ms_b") and k != "ms_b1"), "N")
        print(
            f"\n### {r0['student']}, imgsz {r0['imgsz']}, {r0['split']} split, QAT {r0['epochs']} epochs "
            f"{r0['optimizer']} lr0={r0['lr0']:g}, seed {r0['seed']}, {r0['threads']} thread(s) ({stamp})"
        )
        print(
            f"| format | mAP50-95 | vs FP32 | mAP50 | fake-quant pt | ms b1 | x FP32 b1 | ms b{b} | x FP32 b{b} "
            "| MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|"
        )
        for r in sorted(rs, key=lambda r: ROWS.index(r["row"])):
            d = f"{100 * (r['map'] - fp32):+.1f}" if fp32 is not None else ""
            x1, xb = r.get("speedup_b1", float("nan")), r.get(f"speedup_b{b}", float("nan"))
            pt = f"{r['pt_map']:.3f}" if "pt_map" in r else ""
            print(
                f"| {LABELS[r['row']]} | {r['map']:.3f} | {d} | {r['map50']:.3f} | {pt} | "
                f"{r['ms_b1']:.1f} | {x1:.2f} | "
                f"{r[f'ms_b{b}']:.0f} | {xb:.2f} | {r['size_mb']:.1f} |"
            )


if __name__ == "__main__":
    main()
