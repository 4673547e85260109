"""Resume guard: a distillation checkpoint resumes with its teacher, or refuses and names the command that does.

A KDTrainer checkpoint carries a ``"kd"`` key and the ``teacher``/``kd_*`` keys in its train arguments. The stock
trainer would stop on those keys with one "not a valid YOLO argument" line per key, blaming the user's settings;
``install_resume_guard`` (run on ``import ultralytics_kd``) makes the stock trainers refuse first, with the command
that continues the distillation, so that no path resumes such a run without its teacher.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils.files import get_latest_run

__all__ = ["install_resume_guard", "kd_checkpoint_state", "resume_path"]


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
