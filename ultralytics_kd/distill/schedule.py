"""How strongly to distil at a given point of training."""

from __future__ import annotations

from typing import Any

__all__ = ["batch_scale", "kd_scale"]


def kd_scale(
    progress: float, epochs: int, warmup: float = 0.0, decay: float = 1.0, off_from: float | None = None
) -> float:
    """Multiplier applied to every KD term.

    Args:
        progress (float): Epochs done so far, fractional (``epoch + batch / batches``).
        epochs (int): Total epochs.
        warmup (float): Epochs of linear ramp from 0 to 1; a noisy student learns the labels first.
        decay (float): Multiplier reached at the end of training, linear after the warm-up (1.0 keeps it constant).
        off_from (float, optional): Epoch from which distillation stops entirely (e.g. the close_mosaic epochs).

    Returns:
        (float): The multiplier, in [0, max(1, decay)].

    Examples:
        >>> kd_scale(0.5, 10, warmup=1.0)
        0.5
        >>> kd_scale(10.0, 10, decay=0.0)
        0.0
    """
    if off_from is not None and progress >= off_from:
        return 0.0
    scale = min(1.0, progress / warmup) if warmup > 0 else 1.0
    if decay != 1.0 and epochs > warmup:
        frac = min(1.0, max(0.0, (progress - warmup) / (epochs - warmup)))
        scale *= 1.0 + (decay - 1.0) * frac
    return scale


def batch_scale(
    args: Any, epoch: int, i: int, batches: int, epochs: int, stage: Any = None
) -> tuple[bool, float, bool]:
    """Whether batch ``i`` of ``epoch`` belongs to a mimic stage, the multiplier of its terms, and whether the feature
    terms train their adapters only (the first ``kd_settle`` epochs: a fresh adapter is a random projection, and a
    student's trained features pulled through it move away from what its head reads).

    The stage's imitation term is the whole loss, at full strength; after it (or without one) ``kd_scale`` applies
    ``kd_warmup`` (or the settling, if longer), ``kd_decay`` and ``kd_off_last`` (which stops distilling in the last
    ``close_mosaic`` epochs).
    """
    if stage is not None and stage.active(epoch):
        return True, 1.0, False
    off_from = epochs - args.close_mosaic if args.kd_off_last and args.close_mosaic else None
    progress, settle = epoch + i / max(batches, 1), float(args.kd_settle or 0.0)
    scale = kd_scale(progress, epochs, max(args.kd_warmup, settle), args.kd_decay, off_from)
    return False, scale, progress < settle
