"""How strongly to distil at a given point of training."""

from __future__ import annotations

from typing import Any

__all__ = ["batch_scale", "kd_scale", "settle_epochs"]


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


def settle_epochs(args: Any, kept: bool) -> float:
    """Epochs in which a student with weights of its own settles in: ``kd_settle``, else the stock warm-up's
    ``warmup_epochs`` for such a student (``kept``) and 0 for any other.

    While it settles, every term ramps in from 0 (as ``kd_warmup``) and the feature terms train only their adapters: a
    fresh adapter is a random projection, and pulling a trained student's features through it moves them away from what
    its head reads (a scratch student has no such features to lose, so it gets no settling by default).
    """
    if args.kd_settle is not None:
        return float(args.kd_settle)
    return float(args.warmup_epochs) if kept else 0.0


def batch_scale(
    args: Any, epoch: int, i: int, batches: int, epochs: int, stage: Any = None
) -> tuple[bool, float, bool]:
    """Whether batch ``i`` of ``epoch`` belongs to a mimic stage, the multiplier of its terms, and whether the feature
    terms train their adapters only (the student settling in, ``settle_epochs``; ``args.kd_settle`` is resolved).

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
