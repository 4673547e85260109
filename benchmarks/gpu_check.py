"""What only a CUDA device shows, in one short run (~3 min on one GPU): AMP distillation, teacher cost, CUDA export.

1. ``kd_train``: KDTrainer (yolov8n.yaml student, an untrained yolov8s teacher saved as .pt, synthetic data) for two
   epochs of ``--steps`` batches each, in fp32, under amp=True (fp16) and under amp="bf16". At the first optimizer
   step the teacher's parameters must be in the autocast dtype and on the trainer's device; every KD loss column (one
   the plain run lacks) must be finite and non-zero.
2. ``timing``: the second epoch of the plain and the KD fp32 runs, ``KD/plain`` beside kd_gain.py's ``floor``
   (1 + teacher forward / student step, measured in fp32 at the same batch and image size).
3. ``onnx``: each plugin YAML in ``ultralytics_kd/cfg/models`` through the stock ``model.export(format="onnx")``, run
   on ONNX Runtime (its CUDA provider where installed) against the fused PyTorch model on the device, TF32 off on both
   sides; differences as ``ultralytics_kd.deploy.measure.parity`` measures them.
4. ``int8``: Q/DQ INT8 ONNX files (``--int8-onnx``, e.g. the KD-QAT and PTQ files ``benchmarks/int8.py`` writes; by
   default a PTQ export of each plugin YAML on the synthetic set, with its FP32 export beside it) on ONNX Runtime's
   CUDA provider against the FP32 reference, the FP32 file beside it on the CPU provider: cosine of the raw outputs at
   or above ``PARITY_COSINE`` and ``max_abs`` (boxes / imgsz, class scores) within ``INT8_ATOL`` (near 0.5, a class
   score moves the cosine too little to show a collapse). A CUDA run also compares the INT8 file on the CUDA provider
   with the same file on the CPU provider (the INT8 kernels the CPU figures in docs/BENCHMARKS.md come from), cosine
   at or above ``PARITY_COSINE``, and fails if ONNX Runtime has no CUDA provider (the INT8 file would have run on the
   CPU only). CUDA latency at batch 1 and 32 beside the FP32 file's. TensorRT is not in the device image; where it
   is, build the engine from the same file.

Nothing is downloaded: Ultralytics' AMP self-test, which fetches yolo26n.pt, is patched to pass (AMP itself is what
this checks). One JSON line per check is appended to ``--out``; the exit code is 1 if a check fails or errors.

    python benchmarks/gpu_check.py --device 0
    python benchmarks/gpu_check.py --dry-run-cpu --out /tmp/gpu_check.jsonl  # the same code on CPU, fp32 only
    python benchmarks/gpu_check.py --device 0 --int8-onnx kdqat.onnx ptq.onnx  # the BCCD INT8 files (carry them)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import traceback
from datetime import datetime
from functools import partial
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_gain import ROOT, measure_floor  # noqa: E402

PRECISIONS = {"fp32": (False, "float32"), "fp16": (True, "float16"), "bf16": ("bf16", "bfloat16")}  # amp=, dtype
# INT8 against FP32 (parity's max_abs): the random-weight students this check exports stayed within 0.008 on the CPU
# provider at 64 and 320 px; a collapsed class score is ~0.5 off
INT8_ATOL = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The check's flags; sizes default to 320 px, batch 16, 10 steps on CUDA and 64 px, batch 4, 2 steps on CPU."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="0", help="CUDA device index (default 0)")
    p.add_argument("--steps", type=int, help="training batches per epoch; every run trains 2 epochs")
    p.add_argument("--imgsz", type=int, help="training and export image size (default 320; 64 with --dry-run-cpu)")
    p.add_argument("--batch", type=int, help="batch size, also the nominal one: one optimizer step a batch (16; 4)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.jsonl"))
    p.add_argument("--dry-run-cpu", action="store_true", help="run every check on the CPU in fp32 (a smoke test)")
    p.add_argument("--int8-onnx", nargs="*", default=[], help="Q/DQ ONNX files to check (default: PTQ exports)")
    args = p.parse_args(argv)
    cpu = args.dry_run_cpu
    args.steps, args.imgsz = args.steps or (2 if cpu else 10), args.imgsz or (64 if cpu else 320)
    args.batch = args.batch or (4 if cpu else 16)
    return args


def make_inputs(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """Write ``steps`` training batches and one val batch of synthetic images, and an untrained yolov8s teacher .pt."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from ultralytics_kd.data import make_synthetic_dataset
    from ultralytics_kd.data.synth import CLASSES

    n = (args.steps + 1) * args.batch
    data = make_synthetic_dataset(work / "data", n=n, imgsz=args.imgsz, val_frac=1 / (args.steps + 1), test_frac=0)
    teacher = DetectionModel("yolov8s.yaml", nc=len(CLASSES), verbose=False)
    teacher.names = dict(enumerate(CLASSES))
    torch.save({"model": teacher.half(), "train_args": {}}, work / "teacher.pt")  # as Ultralytics saves checkpoints
    return data, work / "teacher.pt"


def train_run(name: str, args: argparse.Namespace, work: Path, data: Path, teacher: Path | None, amp) -> dict:
    """Train two epochs; return the teacher's dtype and device at the first optimizer step, the last epoch's mean loss
    columns and its batch-loop time."""
    import torch
    from ultralytics import YOLO

    from ultralytics_kd import KDTrainer

    seen, times = {}, []

    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def batch_end(trainer):  # nbs=batch: every batch is an optimizer step
        if not seen:
            p = next(trainer.teacher.parameters()) if hasattr(trainer, "teacher") else None
            seen.update(amp=bool(trainer.amp), device=str(trainer.device))
            if p is not None:
                seen.update(teacher_device=str(p.device), teacher_dtype=str(p.dtype).removeprefix("torch."))

    def epoch_end(trainer):
        times[-1] += now()
        seen["losses"] = {k: float(v) for k, v in trainer.tloss.items()}

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_batch_end", batch_end)
    model.add_callback("on_train_epoch_start", lambda trainer: times.append(-now()))
    model.add_callback("on_train_epoch_end", epoch_end)
    model.train(
        trainer=KDTrainer if teacher else None, data=str(data), epochs=2, imgsz=args.imgsz, batch=args.batch,
        nbs=args.batch, workers=0 if args.dry_run_cpu else 4, device="cpu" if args.dry_run_cpu else args.device,
        amp=amp, project=str(work / "runs"), name=name, exist_ok=True, plots=False, val=False, seed=0,
        deterministic=False, **({"teacher": str(teacher)} if teacher else {}),
    )  # fmt: skip
    return {**seen, "epoch_s": times[-1]}


def kd_verdict(precision: str, run: dict, plain: dict | None) -> dict:
    """PASS when the teacher has the autocast dtype and the trainer's device, and the KD loss columns are finite and
    non-zero; the KD columns are those the plain run does not have."""
    amp, dtype = PRECISIONS[precision]
    stock = set(plain["losses"]) if plain else {"box_loss", "cls_loss", "dfl_loss"}
    kd = {k: v for k, v in run["losses"].items() if k not in stock}
    problems = [f"teacher dtype {run['teacher_dtype']}, expected {dtype}"] if run["teacher_dtype"] != dtype else []
    if run["teacher_device"] != run["device"]:
        problems.append(f"teacher on {run['teacher_device']}, trainer on {run['device']}")
    if run["amp"] != bool(amp):
        problems.append(f"trainer.amp is {run['amp']} under amp={amp!r}")
    problems += [f"{k}={v}" for k, v in kd.items() if not math.isfinite(v) or v == 0] or ([] if kd else ["no KD loss"])
    return {"check": "kd_train", "precision": precision, **run, "kd_losses": kd, "problems": problems}


def timing_row(plain: dict, kd: dict, args: argparse.Namespace, teacher: Path) -> dict:
    """KD/plain epoch time of the fp32 runs beside kd_gain.py's floor for the same student, teacher and sizes."""
    kw = {**vars(args), "device": "cpu" if args.dry_run_cpu else args.device, "teacher": str(teacher)}
    floor = measure_floor(argparse.Namespace(**kw, student="yolov8n.yaml"))
    times = {"plain_epoch_s": plain["epoch_s"], "kd_epoch_s": kd["epoch_s"]}
    return {**floor, "check": "timing", **times, "kd_plain": kd["epoch_s"] / plain["epoch_s"]}


@contextlib.contextmanager
def _strict_fp32():
    """TF32 off for convolutions and matmuls (both default on or partly on for CUDA), restored afterwards."""
    import torch

    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _trained_looking(model) -> None:
    """Random BatchNorm statistics and affine terms (the default ones make folding them an identity, hiding fusion
    bugs) and zero class biases (the stock init gives every score ~1e-5, whatever the image)."""
    import torch

    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -1, 1), (m.running_var, 0.5, 2), (m.weight, 0.5, 2), (m.bias, -1, 1)):
                t.data.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    for branch in model.model[-1].cv3:
        branch[-1].bias.data.zero_()


def onnx_row(cfg: Path, args: argparse.Namespace, work: Path) -> dict:
    """Export one plugin YAML to ONNX; ONNX Runtime against the fused PyTorch model on the device."""
    import onnxruntime as ort
    import torch
    from ultralytics import YOLO

    from ultralytics_kd.deploy import OnnxRunner
    from ultralytics_kd.deploy.measure import PARITY_ATOL, parity, parity_ok

    yolo = YOLO(str(cfg))
    _trained_looking(yolo.model)
    with contextlib.chdir(work):  # a YAML-built model exports into the working directory
        f = Path(yolo.export(format="onnx", imgsz=args.imgsz, verbose=False)).resolve()
    device = torch.device("cpu" if args.dry_run_cpu else f"cuda:{args.device}")
    available = ort.get_available_providers()
    cuda = device.type == "cuda" and "CUDAExecutionProvider" in available  # else ORT on the CPU, still vs CUDA torch
    cuda_ep = [("CUDAExecutionProvider", {"device_id": device.index, "use_tf32": 0})] if cuda else []
    runner = OnnxRunner(f, providers=[*cuda_ep, "CPUExecutionProvider"])
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    model = yolo.model.fuse().eval().to(device)  # the export fused a copy; this fuses the original the same way
    with torch.no_grad(), _strict_fp32():
        diff = parity(runner(x)[0], model(x.to(device))[0], args.imgsz)
    used = runner.session.get_providers()
    runtime = f"onnxruntime-{device.type}"  # judged against PyTorch on that device, wherever ORT itself ran
    tol = PARITY_ATOL[runtime]
    problems = [] if parity_ok(diff, runtime) else [f"max_abs {diff['max_abs']:.2e} > {tol:g}"]
    return {"check": "onnx", "model": cfg.name, "ort": ort.__version__, "providers_used": used, **diff, "tol": tol,
            "providers_available": available, "problems": problems}  # fmt: skip


def ptq_export(cfg: Path, args: argparse.Namespace, work: Path, data: Path) -> Path:
    """A PTQ Q/DQ export (``format=onnx quantize=8``) of one plugin YAML, calibrated on the synthetic set, and the FP32
    export of the same weights beside it (``<name>.onnx``, the INT8 check's reference)."""
    from ultralytics import YOLO

    yolo = YOLO(str(cfg))
    _trained_looking(yolo.model)
    export = dict(format="onnx", imgsz=args.imgsz, dynamic=True, verbose=False)
    with contextlib.chdir(work):
        f = yolo.export(**export, quantize=8, data=str(data))
        yolo.export(**export)  # after the INT8 export, which writes <name>.onnx as its source and removes it
        return Path(f).resolve()


def int8_row(f: Path, args: argparse.Namespace) -> dict:
    """One Q/DQ ONNX file on ONNX Runtime's CUDA provider against the FP32 file beside it on the CPU provider, and on
    a CUDA run against itself on the CPU provider; CUDA latency beside FP32's (see the module docstring)."""
    import onnxruntime as ort
    import torch

    from ultralytics_kd.deploy import OnnxRunner
    from ultralytics_kd.deploy.measure import PARITY_COSINE, parity, time_calls

    available = ort.get_available_providers()
    cuda = not args.dry_run_cpu and "CUDAExecutionProvider" in available
    device = [("CUDAExecutionProvider", {"device_id": int(args.device)})] if cuda else []
    runner = OnnxRunner(f, providers=[*device, "CPUExecutionProvider"])
    used = runner.session.get_providers()
    fp32 = [p for p in (f.with_name(f.name.replace("_int8", "")), f.with_name("fp32.onnx")) if p != f and p.is_file()]
    imgsz = runner.session.get_inputs()[0].shape[-1]
    imgsz = imgsz if isinstance(imgsz, int) else args.imgsz
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    out = runner(x)[0]
    row = {"check": "int8", "model": f.name, "ort": ort.__version__, "providers_used": used,
           "providers_available": available, "reference": fp32[0].name if fp32 else None}  # fmt: skip
    problems = []
    if not args.dry_run_cpu and used[0] != "CUDAExecutionProvider":
        problems.append(f"no CUDA provider in onnxruntime {ort.__version__} (pip install onnxruntime-gpu): ran on CPU")
    if fp32:  # the FP32 reference on the CPU provider
        row.update(parity(out, OnnxRunner(fp32[0])(x)[0], imgsz))
        if row["cosine"] < PARITY_COSINE:
            problems.append(f"cosine {row['cosine']:.5f} < {PARITY_COSINE} against FP32")
        if row["max_abs"] > INT8_ATOL:
            problems.append(f"max_abs {row['max_abs']:.4f} > {INT8_ATOL} against FP32")
    if used[0] == "CUDAExecutionProvider":  # the same file on the CPU provider's INT8 kernels
        row["cuda_cpu_cosine"] = parity(out, OnnxRunner(f)(x)[0], imgsz)["cosine"]
        if row["cuda_cpu_cosine"] < PARITY_COSINE:
            problems.append(f"CUDA against CPU provider: cosine {row['cuda_cpu_cosine']:.5f} < {PARITY_COSINE}")
    elif not fp32:
        problems.append("no FP32 file beside it and no CUDA provider: nothing to compare with")
    row["problems"] = problems
    if runner.session.get_inputs()[0].shape[0] != 1:  # dynamic batch: time batch 1 and 32
        runners = {
            "int8": runner,
            **({"fp32": OnnxRunner(fp32[0], providers=[*device, "CPUExecutionProvider"])} if fp32 else {}),
        }
        for b in (1, 32):
            ms = time_calls(runners, torch.rand(b, 3, imgsz, imgsz), warmup=3, reps=20)
            row.update({f"{k}_ms_b{b}": v.median for k, v in ms.items()})
            if "fp32" in ms:
                row[f"int8_x_fp32_b{b}"] = ms["fp32"].ratio(ms["int8"])  # > 1: INT8 is faster
    return row


def _emit(row: dict, out: Path, settings: dict) -> dict:
    """Append one check's JSON line (with the run's ``settings``) to ``out`` and print it compactly."""
    import torch

    status = row.get("status") or ("FAIL" if row.get("problems") else "PASS")
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    stamp = {"date": datetime.now().isoformat(timespec="seconds"), "device_name": dev}
    row = {**row, "status": status, **settings, **stamp}
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    skip = {"losses", "date", "device_name", "providers_available", *settings}
    short = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items() if k not in skip}
    print(f"gpu_check: {status:5} {json.dumps(short)}")
    return row


def main(argv: list[str] | None = None) -> int:
    """Run every check; return 0 when all pass (or there is no CUDA device and no --dry-run-cpu), else 1."""
    args = parse_args(argv)
    import torch

    if not args.dry_run_cpu and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --dry-run-cpu for a CPU smoke test)")
        return 0
    import ultralytics_kd  # noqa: F401  (registers the plugin blocks the ONNX check builds)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    precisions = ["fp32"] if args.dry_run_cpu else list(PRECISIONS)
    rows, emit = [], partial(_emit, out=out, settings={k: getattr(args, k) for k in ("imgsz", "batch", "steps")})

    def job(fn, *a, **kw) -> dict | None:  # one failing check must not cost the others their one run
        try:
            return fn(*a, **kw)
        except Exception as e:
            traceback.print_exc()
            row = {"check": fn.__name__, "on": str(a[0])[:60], "status": "ERROR", "error": f"{type(e).__name__}: {e}"}
            rows.append(emit(row))

    # the AMP self-test downloads yolo26n.pt, and a device machine has no network
    with tempfile.TemporaryDirectory() as tmp, mock.patch("ultralytics.engine.trainer.check_amp", return_value=True):
        work = Path(tmp)
        data, teacher = make_inputs(work, args)
        plain = job(train_run, "plain-fp32", args, work, data, None, False)
        runs = {p: job(train_run, f"kd-{p}", args, work, data, teacher, PRECISIONS[p][0]) for p in precisions}
        rows += [emit(v) for p, r in runs.items() if r and (v := job(kd_verdict, p, r, plain))]
        if plain and runs["fp32"] and (timing := job(timing_row, plain, runs["fp32"], args, teacher)):
            rows.append(emit({**timing, "status": "INFO"}))  # a measurement, nothing to pass
        cfgs = sorted((ROOT / "ultralytics_kd" / "cfg" / "models").glob("*.yaml"))
        for cfg in cfgs:
            rows += [emit(r) for r in [job(onnx_row, cfg, args, work)] if r]
        files = [Path(f).resolve() for f in args.int8_onnx]
        if not files:
            files = [f for cfg in cfgs if (f := job(ptq_export, cfg, args, work, data))]
        for f in files:
            rows += [emit(r) for r in [job(int8_row, f, args)] if r]
    failed = [r for r in rows if r["status"] in {"FAIL", "ERROR"}]
    print(f"gpu_check: {len(rows) - len(failed)} of {len(rows)} checks passed or informed; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
