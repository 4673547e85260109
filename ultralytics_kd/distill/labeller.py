"""Where the pseudo-labels of unlabelled images come from: which model's boxes (``kd_pseudo_from``), above which
confidence (``kd_pseudo_conf=auto``).

- ``teacher``: the frozen teacher, on every batch.
- ``best``: the better on val of the teacher and the student's EMA. Once the EMA's validation fitness passes the
  teacher's, a frozen copy of the best EMA so far labels the unlabelled images, and it is replaced whenever a later
  validation scores higher (the same rule that writes ``best.pt``). The pseudo-labels then improve with the student
  instead of stopping at its teacher's level: the "mean teacher" of semi-supervised detection (Liu et al., "Unbiased
  Teacher for Semi-Supervised Object Detection", 2021, https://arxiv.org/abs/2102.09480; Efficient Teacher,
  https://arxiv.org/abs/2302.07577), started from the teacher rather than from a burn-in of the student.

The teacher still gives every other term (the labelled images' terms and any dense ones on unlabelled images); only
the boxes handed to the stock loss change source. A resumed run starts from ``best.pt`` when its fitness is above the
teacher's. The choice is made on val, never on test, and reads nothing of the dataset's classes or sizes.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torch import distributed as dist
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_kd.distill.strong import strong_unlabeled
from ultralytics_kd.distill.teacher import FrozenTeacher, validate_teacher

__all__ = ["AUTO_FALLBACK", "PseudoLabeller", "setup_pseudo_labels", "unlabeled_views"]

AUTO_FALLBACK = 0.5  # kd_pseudo_conf=auto where the teacher detects nothing on val (the default threshold)

PREFIX = colorstr("KD:")


def _rank0(value: float | None) -> float | None:
    """Rank 0's ``value`` on every DDP rank (the teacher's check returns metrics on rank 0 only), so that every rank
    takes the same labeller; the value itself outside DDP."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float("nan") if value is None else value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return None if t.isnan().item() else t.item()


class PseudoLabeller:
    """The student's best validated EMA as the pseudo-labeller once it scores above the teacher on val.

    Args:
        teacher_fitness (float): The teacher's validation fitness, the score a student copy must pass.
        dtype (torch.dtype): The dtype the copy runs in (the teacher's: half under AMP).

    Attributes:
        model (FrozenTeacher | None): The copy labelling the unlabelled images; None while the teacher does.
        fitness (float): The score of the current labeller (the teacher's until a copy passes it).
        epoch (int | None): The epoch (1-based) whose EMA is the labeller; None for the teacher.

    Examples:
        >>> from types import SimpleNamespace
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> labeller = PseudoLabeller(teacher_fitness=0.3)
        >>> ema = SimpleNamespace(ema=DetectionModel("yolov8n.yaml", nc=2, verbose=False))
        >>> labeller.update(SimpleNamespace(fitness=0.2, epoch=0, ema=ema)), labeller.model is None
        (False, True)
        >>> labeller.update(SimpleNamespace(fitness=0.4, epoch=1, ema=ema)), labeller.epoch
        (True, 2)
    """

    def __init__(self, teacher_fitness: float, dtype: torch.dtype = torch.float32):
        """Start with the teacher as the labeller."""
        self.model: FrozenTeacher | None = None
        self.fitness = float(teacher_fitness)
        self.epoch: int | None = None
        self.dtype = dtype

    def take(self, model: torch.nn.Module, fitness: float, epoch: int | None) -> None:
        """Make a frozen, fused copy of ``model`` the labeller, on the device of ``model``."""
        device = next(model.parameters()).device
        self.model = FrozenTeacher(deepcopy(unwrap_model(model)).float()).to(device, self.dtype)
        self.fitness, self.epoch = float(fitness), epoch

    def update(self, trainer: Any) -> bool:
        """After a validation (``on_fit_epoch_end``): take the EMA when its fitness is above the labeller's.

        Returns:
            (bool): Whether the labeller changed.
        """
        fitness = _rank0(trainer.fitness)
        if fitness is None or fitness <= self.fitness:
            return False
        first = self.model is None
        self.take(trainer.ema.ema, fitness, trainer.epoch + 1)
        if first:
            LOGGER.info(
                f"{PREFIX} the student's EMA (fitness {fitness:.4f}, epoch {self.epoch}) is above its teacher on val: "
                f"it labels the unlabelled images from now on (kd_pseudo_from=best)"
            )
        return True

    @torch.no_grad()
    def __call__(self, img: torch.Tensor, n_labeled: int | None) -> dict[str, Any] | None:
        """The labeller's outputs on the unlabelled images of a batch (those after ``n_labeled``); None while the
        teacher labels them (its outputs on the whole batch serve then)."""
        if self.model is None or n_labeled is None:
            return None
        return self.model(img[n_labeled:])


def setup_pseudo_labels(trainer: Any) -> PseudoLabeller | None:
    """Settle where the pseudo-labels of unlabelled images come from, once the teacher has been validated.

    - ``kd_pseudo_conf=auto``: the threshold becomes the teacher's max-F1 confidence on val (the operating point at
      which the stock validator reports P and R), set on the plan and the criterion; 0.5 if the teacher detects
      nothing there.
    - ``kd_pseudo_from=best``: returns the labeller, registered on ``on_fit_epoch_end``; None otherwise (the teacher
      labels them).

    Reads the teacher's metrics from the pre-training check (``kd_teacher_check``), validating it here if the check
    was off and either option needs them. Call it in ``_setup_train`` after that check and before the teacher moves to
    AMP's dtype.
    """
    plan = trainer.kd_unlabeled_plan
    if trainer._kd_unlabeled is None or plan.pseudo_conf is None:
        return None
    auto, best = plan.pseudo_conf == "auto", trainer.args.kd_pseudo_from == "best"
    if not (auto or best):
        return None
    metrics = trainer.kd_teacher_metrics  # {} on DDP ranks other than 0: None only where the check was off
    if metrics is None:
        metrics = validate_teacher(trainer.teacher.model, trainer.test_loader, trainer.args, trainer.save_dir)
    if auto:
        conf = _rank0(metrics.get("max_f1_conf"))
        conf = conf if conf is not None and 0.0 < conf < 1.0 else AUTO_FALLBACK
        plan.pseudo_conf = unwrap_model(trainer.model).criterion.pseudo_conf = conf
        LOGGER.info(f"{PREFIX} kd_pseudo_conf=auto: {conf:.3f}, the teacher's max-F1 confidence on val")
    if not best:
        return None
    amp = torch.bfloat16 if trainer.args.amp == "bf16" else torch.float16
    labeller = PseudoLabeller(_rank0(metrics.get("fitness", 0.0)), amp if trainer.amp else torch.float32)
    if trainer.resume and trainer.best.exists() and (trainer.best_fitness or 0.0) > labeller.fitness:
        model = load_checkpoint(trainer.best)[0].to(trainer.device)
        labeller.take(model, trainer.best_fitness, None)
        LOGGER.info(f"{PREFIX} resumed: {trainer.best} (fitness {trainer.best_fitness:.4f}) labels unlabelled images")
    else:
        LOGGER.info(
            f"{PREFIX} the teacher's boxes are the pseudo-labels until the student's EMA passes its val fitness "
            f"{labeller.fitness:.4f} (kd_pseudo_from=best)"
        )
    trainer.add_callback("on_fit_epoch_end", labeller.update)
    return labeller


def unlabeled_views(trainer: Any, batch: dict[str, Any], n_labeled: int | None) -> dict[str, Any] | None:
    """After the teacher saw a training batch: the labeller's outputs on its unlabelled images (None: the teacher's
    serve), then, with ``kd_unlabeled_strong``, the student's strong view of those images in ``batch["img"]``
    (``distill/strong.py``), so that both labellers see the stock (weak) view."""
    pseudo = trainer.kd_labeller(batch["img"], n_labeled) if trainer.kd_labeller is not None else None
    if trainer.args.kd_unlabeled_strong:
        batch["img"] = strong_unlabeled(batch["img"], n_labeled)
    return pseudo
