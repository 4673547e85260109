"""The trainer's callbacks: the batch index the KD schedule reads, the mimic stage's hand-over (also when the run stops
inside the stage), and the report.

They go through Ultralytics' callback lists rather than overrides, so they run wherever the stock loop fires the event
(an OOM restart of an epoch included) and reach DDP workers with the trainer's callbacks.
"""

from __future__ import annotations

from typing import Any

from ultralytics.utils import LOGGER, colorstr

__all__ = ["add_kd_callbacks"]

PREFIX = colorstr("KD:")


def _new_epoch(trainer: Any) -> None:
    """Restart the batch index that the KD schedule reads (``on_train_epoch_start``, also on an OOM restart)."""
    trainer._kd_batch = -1


def _next_batch(trainer: Any) -> None:
    """Advance the batch index; a mimic stage hands over the head when due and warms up (``on_train_batch_start``)."""
    trainer._kd_batch += 1
    if trainer.kd_stage is not None:
        trainer.kd_stage.on_train_batch_start(trainer, trainer._kd_batch)


def _end_stage(trainer: Any) -> None:
    """A mimic stage ends with this epoch if the run may stop after it (``on_train_epoch_end``, before validation)."""
    if trainer.kd_stage is not None:
        trainer.kd_stage.end_if_stopping(trainer)


def _write_report(trainer: Any) -> None:
    """Write kd_report.md and its plots into the run folder; a failed report never fails the finished training."""
    from ultralytics_kd.report import write_report

    try:
        write_report(trainer.save_dir, teacher_metrics=trainer.kd_teacher_metrics)  # kept as kd_teacher.json
    except Exception as e:
        LOGGER.warning(f"{PREFIX} could not write kd_report.md in {trainer.save_dir}: {type(e).__name__}: {e}")


_CALLBACKS = {
    "on_train_epoch_start": _new_epoch,
    "on_train_batch_start": _next_batch,
    "on_train_epoch_end": _end_stage,
    "on_train_end": _write_report,
}


def add_kd_callbacks(trainer: Any) -> None:
    """Add the callbacks once: DDP workers get the launcher's callbacks with the trainer and must not add them again."""
    for event, callback in _CALLBACKS.items():
        if callback not in trainer.callbacks[event]:
            trainer.add_callback(event, callback)
