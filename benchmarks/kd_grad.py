"""How hard distillation pulls on the student: its gradient norm at each optimizer step, before the stock clip at 10.

A KD term's loss value says little about its pull: the guard (kd_max_ratio) caps values, but a feature term whose value
is a tenth of the detection loss can still carry as much gradient. This starts each run with ``kd_gain.py``'s schedule
(``--epochs`` 40, so the same warm-up and gradient accumulation), stops it after ``--probe-epochs`` without validating,
and prints the mean student gradient norm per optimizer step and its ratio to scratch's. The run names, data, teacher,
student and ``--kd`` settings are those of ``kd_gain.py``. On a CUDA device with AMP the norms include the loss scale,
so compare runs on the CPU (the default).

    python benchmarks/kd_grad.py --runs scratch,ld+cwd,ld+cwd@0.25 --student cfg/models/yolov9-tiny-shufflev2-c2f.yaml \
        --kd kd_cwd_norm=True --seed 1 --threads 1
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_gain import ROOT, build_parser, run_kwargs, start_weights  # noqa: E402


class _Done(Exception):
    """Raised at the end of the last probed epoch to leave training."""


def grad_norms(name: str, args, probe_epochs: int) -> list[float]:
    """Train one run for its first probe_epochs without validation; return the student's gradient norm at each step."""
    import torch
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect import DetectionTrainer

    from ultralytics_kd import KDTrainer

    kw = run_kwargs(name, args)
    norms = []

    def optimizer_step(self):
        grads = [p.grad.detach().flatten() for p in self.model.parameters() if p.grad is not None]
        norms.append(float(torch.cat(grads).float().norm()))
        base.optimizer_step(self)

    base = KDTrainer if "teacher" in kw else DetectionTrainer

    def stop(trainer):
        if trainer.epoch + 1 >= probe_epochs:
            raise _Done

    probe = type(f"Grad{base.__name__}", (base,), {"optimizer_step": optimizer_step})
    model = YOLO(start_weights(args) or args.student)  # --continue-from: a student with weights of its own
    model.add_callback("on_train_epoch_end", stop)
    try:
        model.train(
            trainer=probe, data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, seed=args.seed,
            workers=args.workers, device=args.device, fraction=args.fraction, val=False, plots=False,
            project=str(ROOT / "runs" / "kd_grad"), name=name, exist_ok=True,
            **({"kd_teacher_check": False} if base is KDTrainer else {}), **kw,
        )  # fmt: skip
    except _Done:
        pass
    return norms


def main() -> None:
    p = build_parser(__doc__)
    p.add_argument("--probe-epochs", type=int, default=1, help="epochs to record before stopping each run")
    p.set_defaults(runs="scratch,ld+cwd")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = {name: grad_norms(name, args, args.probe_epochs) for name in args.runs.split(",")}
    ref = statistics.mean(rows["scratch"]) if "scratch" in rows else None
    head = f"{args.student}, first {args.probe_epochs} of {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}"
    print(f"\n{head}, seed {args.seed}")
    print("| run | steps | mean grad norm | vs scratch |\n|---|---|---|---|")
    for name, norms in rows.items():
        mean = statistics.mean(norms)
        print(f"| {name} | {len(norms)} | {mean:.1f} | {f'{mean / ref:.2f}x' if ref else '-'} |")


if __name__ == "__main__":
    main()
