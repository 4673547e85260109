"""Resume: the distillation state a checkpoint carries, the teacher check on resume, and the guard of stock trainers.

``kd_state`` is what ``KDTrainer.save_model`` adds under a checkpoint's ``"kd"`` key (teacher path and hash, settings,
adapter weights, the start and its stage); ``check_resumed_teacher`` holds a resumed run to the teacher it started with.

A KDTrainer checkpoint carries a ``"kd"`` key and the ``teacher``/``kd_*`` keys in its train arguments. The stock
trainer would stop on those keys with one "not a valid YOLO argument" line per key, blaming the user's settings;
``install_resume_guard`` (run on ``import ultralytics_kd``) makes the stock trainers refuse first, with the command
that continues the distillation, so that no path resumes such a run without its teacher.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import torch
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils.files import get_latest_run

__all__ = [
    "add_kd_state",
    "check_resumed_teacher",
    "install_resume_guard",
    "kd_checkpoint_state",
    "kd_state",
    "load_kd_state",
    "resume_path",
]


def resume_path(resume) -> Path | None:
    """The checkpoint a stock ``resume`` value points at: the given file, else the latest run's ``last.pt``."""
    if not resume:
        return None
    if isinstance(resume, (str, Path)) and Path(resume).is_file():
        return Path(resume)
    latest = get_latest_run()
    return Path(latest) if latest else None


def kd_checkpoint_state(path: str | Path | None) -> dict | None:
    """The ``"kd"`` state of a KDTrainer checkpoint, or None for any other file (or no file)."""
    if not path or not str(path).endswith(".pt") or not Path(path).is_file():
        return None
    from ultralytics.nn.tasks import torch_safe_load

    return torch_safe_load(path)[0].get("kd") or None


def check_resumed_teacher(args: Any, moved: dict[str, str]) -> str:
    """Resume with the teacher the run started with: the checkpoint's file, or ``moved`` ones of the same hash.

    Args:
        args: The resumed trainer's args (the checkpoint's settings); ``moved`` is written into them.
        moved (dict[str, str]): ``teacher``/``kd_teacher_weights`` given again on resume (a moved file).

    Returns:
        (str): The teacher file's SHA-256.
    """
    from ultralytics_kd.distill.teacher import teacher_file, teacher_sha256

    ckpt = args.resume
    state = kd_checkpoint_state(ckpt)
    if state is None:
        raise ValueError(
            f"'{ckpt}' was not written by KDTrainer, so there is no distillation to resume. Resume it as it was "
            f"trained (yolo train resume model={ckpt}), or distil from it in a new run (yolo-kd train model={ckpt} "
            f"teacher=path/to/teacher.pt)"
        )
    vars(args).update(moved)
    sha = teacher_sha256(args)
    stored = state.get("teacher_sha256")
    if stored and stored != sha:
        raise ValueError(
            f"teacher '{teacher_file(args)}' (sha256 {sha[:16]}) is not the teacher "
            f"'{state.get('teacher_weights') or state.get('teacher')}' this run started with (sha256 {stored[:16]}); "
            f"resuming with it would change the distillation half-way. Pass the original file with teacher=..., or "
            f"start a new run"
        )
    return sha


def kd_state(trainer: Any) -> dict[str, Any]:
    """What rebuilds the distillation on resume: teacher path and hash, settings, adapter weights, the start."""
    from ultralytics_kd import __version__
    from ultralytics_kd.distill.settings import kd_args
    from ultralytics_kd.distill.stage import NO_STAGE_STATE

    return {
        "teacher": str(trainer.args.teacher),
        "teacher_weights": trainer.args.kd_teacher_weights,
        "teacher_sha256": trainer.kd_teacher_sha256,
        "settings": kd_args(trainer.args),
        "inherited": trainer.kd_start.mode == "select",
        **(trainer.kd_stage.state_dict() if trainer.kd_stage else NO_STAGE_STATE),
        "connectors": {k: v.detach().cpu().clone() for k, v in trainer.kd_connectors.state_dict().items()},
        "teacher_metrics": {k: float(v) for k, v in (trainer.kd_teacher_metrics or {}).items()},  # no numpy types
        "qat_lr_scale": trainer._qat_lr_scale,
        "version": __version__,
    }


def add_kd_state(trainer: Any) -> None:
    """Add the ``"kd"`` key to the checkpoints the stock ``save_model`` just wrote (last, best, the period's)."""
    ckpt = torch.load(trainer.last, map_location="cpu", weights_only=False)
    ckpt["kd"] = kd_state(trainer)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    files = [trainer.last]
    if trainer.best_fitness == trainer.fitness:
        files.append(trainer.best)
    if trainer.save_period > 0 and trainer.epoch % trainer.save_period == 0:
        files.append(trainer.wdir / f"epoch{trainer.epoch}.pt")
    for f in files:
        f.write_bytes(buffer.getvalue())
    if trainer.kd_stage is not None:
        trainer.kd_stage.checkpointed()


def load_kd_state(trainer: Any, state: dict[str, Any] | None) -> None:
    """Load a checkpoint's ``"kd"`` state into the trainer: the adapters, and the mimic stage's state.

    Called wherever the stock trainer loads a checkpoint's training state (``_load_checkpoint_state``): on resume, and
    in its NaN recovery, which reloads ``last.pt`` into the student and the EMA and, through here, into the adapters
    and the stage (a checkpoint from before the transplant makes the stage run it again).
    """
    if not state:
        return
    if state.get("connectors"):
        trainer.kd_connectors.load_state_dict(state["connectors"])
    if trainer.kd_stage is not None:
        trainer.kd_stage.load_state_dict(state, trainer.device)


def _refuse_kd_resume(check_resume):
    @functools.wraps(check_resume)
    def guarded(self, overrides):
        from ultralytics_kd.engine.trainer import KDTrainer

        path = None if isinstance(self, KDTrainer) else resume_path(self.args.resume)
        if path is not None and kd_checkpoint_state(path) is not None:
            raise RuntimeError(
                f"'{path}' is a distillation checkpoint (ultralytics-kd): resuming it with {type(self).__name__} "
                f"would train on without its teacher. Continue the distillation with\n"
                f"    yolo-kd train resume model={path}\n"
                f"or, in Python, YOLO('{path}').train(resume=True, trainer=KDTrainer) "
                f"(from ultralytics_kd import KDTrainer). A moved teacher file can be given again with teacher=..."
            )
        return check_resume(self, overrides)

    guarded._ultralytics_kd = True
    return guarded


def install_resume_guard() -> None:
    """Make the stock trainers refuse to resume a distillation checkpoint; idempotent."""
    if not getattr(BaseTrainer.check_resume, "_ultralytics_kd", False):
        BaseTrainer.check_resume = _refuse_kd_resume(BaseTrainer.check_resume)
