"""The mimic stage of ``kd_init=mimic``: imitate the teacher's features for a few epochs, then take its head.

``kd_init=graft`` runs the same stage for a student whose neck and head have the teacher's layout (``inherit.Graft``):
its backbone outputs imitate the teacher's directly (``EntryMimic``), and at the end the neck and head take a uniform
selection of the teacher's.

For its first epochs the run trains only the student's Detect inputs to imitate the teacher's through 1x1 adapters
(``FeatureMimic`` is the whole loss); at the first batch after them the student takes the teacher's head read through
those adapters (``transplant.transplant_head``) and trains on as a new run would. ``MimicStage`` holds all of it: the
stage's length, its schedule, the trigger and the transplant, and what a checkpoint keeps of it. The trainer only calls
it from its hooks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.torch_utils import one_cycle, unwrap_model

from ultralytics_kd.distill.inherit import Graft, select_graft
from ultralytics_kd.distill.losses.mimic import EntryMimic, FeatureMimic
from ultralytics_kd.distill.transplant import transplant_head

__all__ = ["NO_STAGE_STATE", "MimicStage", "mimic_epochs", "mimic_problem"]

PREFIX = colorstr("KD:")
# a run without a stage, in checkpoints
NO_STAGE_STATE = {"mimic": False, "graft": False, "transplanted": False, "mimic_stats": None}


def mimic_epochs(value: float, epochs: int) -> int:
    """Epochs of the mimic stage: ``value`` epochs, or that fraction of ``epochs`` below 1 (at least one)."""
    return max(1, round(value * epochs)) if value < 1 else round(value)


def mimic_problem(value: float, epochs: int) -> str | None:
    """Why a run of ``epochs`` has no room for a mimic stage of ``kd_mimic_epochs=value``, or None."""
    n = mimic_epochs(value, epochs)
    if n >= epochs:
        return f"kd_mimic_epochs={value} gives {n} mimic epochs of {epochs}, leaving none to train the detector"
    return None


def _from_rank0(value: Any, trainer: Any) -> Any:
    """Rank 0's ``value`` on every DDP rank (each rank's clock differs, and all must transplant in the same epoch)."""
    if trainer.world_size <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, 0)
    return box[0]


def _stock_lf(n: int, lrf: float, cos_lr: bool) -> Callable[[float], float]:
    """The stock learning-rate factor (cosine or linear, down to ``lrf``) for a run of ``n`` epochs."""
    if cos_lr:
        return one_cycle(1, lrf, n)
    return lambda x: max(1 - x / n, 0) * (1.0 - lrf) + lrf


class MimicStage:
    """The first ``epochs`` epochs of a run that ends by giving the student the teacher's head.

    The stage and the rest of the run are each scheduled as a stock run of their length: each has the stock learning
    rate decay over its own epochs (``lr_factor``) and a warm-up over its share of ``warmup_epochs`` (``warm_up``). The
    student's features should settle before the head is transplanted, and the detector then starts afresh from it;
    with one shared schedule the ShuffleV2 student only drew level with scratch on BCCD (docs/BENCHMARKS.md, Session 8).

    Args:
        epochs (int): Length of the stage in epochs.
        teacher_head (nn.Module, optional): Float copy of the teacher's unfused Detect head, for the transplant.
        graft (Graft, optional): For a graft: which student layers take the teacher's, and which backbone outputs
            imitate which teacher layers. The stage then needs ``teacher_state`` instead of ``teacher_head``.
        teacher_state (dict[str, torch.Tensor], optional): The teacher's unfused state dict, for a graft.

    Attributes:
        term (FeatureMimic | EntryMimic): The imitation loss (of the Detect inputs through adapters, or for a graft of
            the backbone outputs directly).
        transplanted (bool): The stage is over and the student has the teacher's head (or grafted layers).

    Examples:
        >>> stage = MimicStage(2)
        >>> stage.active(1), stage.active(2)
        (True, False)
        >>> lf = stage.lr_factor(epochs=6, lrf=0.01, cos_lr=False)
        >>> lf(0), lf(2)  # the rest of the run restarts the schedule
        (1.0, 1.0)
    """

    def __init__(
        self,
        epochs: int,
        teacher_head: nn.Module | None = None,
        graft: Graft | None = None,
        teacher_state: dict[str, torch.Tensor] | None = None,
    ):
        """Plan a stage of ``epochs`` epochs that hands over ``teacher_head`` (or for a graft, the teacher's layers)."""
        self.epochs, self.teacher_head = epochs, teacher_head
        self.graft, self.teacher_state = graft, teacher_state
        self.term = EntryMimic() if graft else FeatureMimic()
        self.transplanted = False

    def active(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) belongs to the stage."""
        return epoch < self.epochs

    # schedule ---------------------------------------------------------------------------------------------------------
    def lr_factor(self, epochs: int, lrf: float, cos_lr: bool) -> Callable[[float], float]:
        """The learning-rate factor of a run of ``epochs``: one stock schedule for the stage, one for the rest."""
        m = self.epochs  # time= may re-estimate the run at the stage's length; the rest then gets one epoch's schedule
        first, second = _stock_lf(m, lrf, cos_lr), _stock_lf(max(epochs - m, 1), lrf, cos_lr)
        return lambda x: first(x) if x < m else second(x - m)

    def follow(self, trainer: Any) -> None:
        """Fit a stage not yet over to the run's length, which ``time=`` re-estimates after every epoch.

        ``kd_mimic_epochs`` below 1 stays that fraction of ``trainer.epochs``; a count is capped so that at least one
        epoch follows the stage; the stage keeps the epochs it has already run.
        """
        if not self.transplanted:
            n, done = trainer.epochs, getattr(trainer, "epoch", -1) + 1  # no epoch yet: the run is being set up
            m = max(min(mimic_epochs(trainer.args.kd_mimic_epochs, n), n - 1), done)
            self.epochs = _from_rank0(m, trainer)

    def end_if_stopping(self, trainer: Any) -> None:
        """End the stage with this epoch if the run may stop after it, so that no run ends with the stage's head.

        The run may stop after its last epoch, after an epoch that the stock timed stop (``time=``) or a callback broke
        off, once less time is left than an epoch takes (the stock check after validation stops it then), or where
        early stopping may stop it. The schedule is rebuilt for the shorter stage, as the stock ``time=`` rebuilds it.
        """
        t = trainer
        if self.transplanted or not self.active(t.epoch):
            return
        stop = t.stop or t.epoch + 1 >= t.epochs or t.stopper.possible_stop
        if t.args.time:
            now = time.time()
            left = t.args.time * 3600 - (now - t.train_time_start)
            stop = stop or left < (t.epoch_time or 2 * (now - t.epoch_time_start))  # no epoch timed yet: 2x training
        if _from_rank0(stop, t):
            self.epochs = t.epoch + 1
            t._kd_transplant()
            t._setup_scheduler()
            t.scheduler.last_epoch = t.epoch

    def warm_up(self, trainer: Any, i: int, in_stage: bool) -> None:
        """Warm up the stage (or the rest of the run) as a stock run of its length starts, at batch ``i``.

        Over the part's first ``warmup_epochs * part_epochs / epochs`` epochs, each learning rate moves linearly from 0
        (bias: from ``warmup_bias_lr``) to its scheduled value, momentum from ``warmup_momentum`` and, after the stage,
        gradient accumulation from 1 to its nominal value.

        Args:
            trainer (BaseTrainer): Reads ``args``, ``train_loader``, ``epoch``, ``epochs``, ``batch_size``, ``lf``;
                sets ``optimizer`` lr and momentum and ``accumulate``.
            i (int): Batch index within the epoch.
            in_stage (bool): The batch belongs to the stage.
        """
        t, m = trainer, self.epochs
        a, nb = t.args, len(t.train_loader)
        start, n = (0, m) if in_stage else (m, t.epochs - m)
        nw = round(min(a.warmup_epochs * n / t.epochs, n - 1) * nb)
        k = i + nb * (t.epoch - start)
        if k > nw or nw <= 0:
            return
        f = k / nw
        if not in_stage:
            t.accumulate = max(1, round(1 + f * (max(round(a.nbs / t.batch_size), 1) - 1)))
        for g in t.optimizer.param_groups:
            lr0 = a.warmup_bias_lr if g.get("param_group") == "bias" else 0.0
            g["lr"] = lr0 + f * (g["initial_lr"] * t.lf(t.epoch) - lr0)
            if "momentum" in g:
                g["momentum"] = a.warmup_momentum + f * (a.momentum - a.warmup_momentum)

    def on_train_batch_start(self, trainer: Any, i: int) -> None:
        """At batch ``i``: hand over the head at the first batch after the stage, then warm up the current part."""
        in_stage = self.active(trainer.epoch)
        if not in_stage and not self.transplanted:
            trainer._kd_transplant()  # through the trainer's method, so that a trainer subclass can wrap the transplant
        self.warm_up(trainer, i, in_stage)
        if in_stage:  # one optimizer step per batch, as few epochs have to move a random backbone far
            trainer.accumulate = 1

    # transplant -------------------------------------------------------------------------------------------------------
    def transplant(self, trainer: Any) -> None:
        """End the stage: give the student the teacher's head read through the mimic adapters (or for a graft, a
        selection of the teacher's layers).

        The EMA and the optimizer state restart, as in a new run: moments gathered on the imitation loss would set the
        step sizes of the detection loss for the rest of the run (Adam's second moments decay over about 1000 steps; a
        BCCD run has about 100 after the stage). Under DDP, rank 0's head is broadcast: adapter BN statistics are per
        rank.

        Args:
            trainer (KDTrainer): The trainer whose student takes the head, read through ``kd_connectors["mimic"]``.
        """
        model = unwrap_model(trainer.model)
        if self.graft:
            select_graft(model, self.teacher_state, self.graft)
            taken = [model.model[j] for j in range(self.graft.start, len(model.model))]
            a, b = self.graft.start, len(model.model) - 1
            what = f"a selection of the teacher's layers {a + self.graft.offset}-{b + self.graft.offset} as {a}-{b}"
        else:
            adapters = trainer.kd_connectors[self.term.name]
            was_training = adapters.training
            adapters.eval()
            head = self.teacher_head.to(trainer.device)
            transplant_head(model.model[-1], head, adapters, self.term.mean, self.term.std)
            adapters.train(was_training)
            taken, what = [model.model[-1]], "the teacher's head"
        if trainer.world_size > 1:
            for v in nn.ModuleList(taken).state_dict().values():
                dist.broadcast(v, 0)
        if trainer.ema:  # the EMA starts afresh from the new student, as in a new run
            trainer.ema.ema.load_state_dict(model.state_dict())
            trainer.ema.updates = 0
        trainer.optimizer.state.clear()
        trainer.accumulate = max(round(trainer.args.nbs / trainer.batch_size), 1)
        self.transplanted = True  # the teacher's parts are kept until a checkpoint records this (``checkpointed``)
        LOGGER.info(f"{PREFIX} epoch {trainer.epoch + 1}: mimic stage over, the student takes {what}")

    # checkpoints ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the stage (``NO_STAGE_STATE`` has the same keys for a run without one)."""
        stats = self.term.stats() if isinstance(self.term, FeatureMimic) else None
        return {"mimic": True, "graft": self.graft is not None, "transplanted": self.transplanted, "mimic_stats": stats}

    def checkpointed(self) -> None:
        """A checkpoint now holds the stage's state: once it records the transplant, drop the teacher's parts.

        Until then the stock NaN recovery may reload a checkpoint from before the transplant, which then runs again.
        """
        if self.transplanted:
            self.teacher_head = self.teacher_state = None

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Resume (or recover) from ``state_dict``: whether the head was handed over, the teacher statistics on
        ``device``."""
        transplanted = bool(state.get("transplanted", False))
        if not transplanted and self.teacher_head is None and self.teacher_state is None:
            raise RuntimeError("the checkpoint is from before the transplant, whose teacher parts are gone")
        self.transplanted = transplanted
        self.checkpointed()  # a transplanted checkpoint: nothing left to hand over
        if state.get("mimic_stats") and isinstance(self.term, FeatureMimic):
            self.term.load_stats(state["mimic_stats"], device)
