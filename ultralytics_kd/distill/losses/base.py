"""The contract every distillation term follows, and the registry that names them.

A term is a small ``nn.Module`` whose ``forward(student, teacher, **context)`` returns a weighted scalar. It declares
which model output it reads (``source``: the class ``scores``, the DFL ``boxes`` or the ``feats`` maps) and the column
it reports under (``item``), so the criterion that composes a recipe needs no per-term code.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ultralytics_kd.distill.connectors import ChannelAdapter

__all__ = ["TERMS", "KDTerm", "anchor_mean", "channel_norm", "register_term"]

TERMS: dict[str, type[KDTerm]] = {}


class KDTerm(nn.Module):
    """Base class of a distillation term.

    Args:
        weight (float): Loss weight multiplied into the returned value.
        tau (float): Temperature; terms without one ignore it.

    Attributes:
        name (str): Registry key used in recipes, e.g. ``"cls_bce"``.
        item (str): Loss-dict key the term reports under, e.g. ``"kdcls_loss"``. It must contain ``loss`` (Ultralytics'
            results.png plots only such columns) and fit in 10 characters (the progress bar prints names in
            11-wide columns with no separator).
        source (str): Which output the term reads: ``"scores"``, ``"boxes"`` or ``"feats"``.
        stage (str): When the term trains: ``"distill"`` (with the detection loss) or ``"mimic"`` (alone, during the
            feature-mimicking epochs of ``kd_init=mimic``).
    """

    name: ClassVar[str] = ""
    item: ClassVar[str] = ""
    source: ClassVar[str] = "scores"
    stage: ClassVar[str] = "distill"

    def __init__(self, weight: float = 1.0, tau: float = 1.0):
        """Store the weight and temperature."""
        super().__init__()
        self.weight = float(weight)
        self.tau = float(tau)

    @staticmethod
    def connector(c_student: int, c_teacher: int) -> nn.Module:
        """The trainable module that maps one student level to the teacher's width, for ``feats`` terms.

        A term that needs more than channel alignment (MGD's masked generator) returns its own module here.
        """
        return ChannelAdapter(c_student, c_teacher)

    def extra_repr(self) -> str:
        """Show weight and temperature when the module is printed."""
        return f"weight={self.weight:g}, tau={self.tau:g}"


def register_term(cls: type[KDTerm]) -> type[KDTerm]:
    """Register a term class under its ``name``; a clash is an error, since recipes refer to terms by name."""
    if not cls.name or not cls.item:
        raise ValueError(f"{cls.__name__} must set class attributes 'name' and 'item'")
    if "loss" not in cls.item or len(cls.item) > 10:
        raise ValueError(f"{cls.__name__}.item={cls.item!r} must contain 'loss' and be at most 10 characters")
    if cls.name in TERMS and TERMS[cls.name] is not cls:
        raise ValueError(f"KD term name '{cls.name}' is already registered by {TERMS[cls.name].__name__}")
    TERMS[cls.name] = cls
    return cls


def anchor_mean(per_anchor: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Average a (B, A) per-anchor loss, optionally weighted per anchor (e.g. by teacher confidence).

    The weighted form divides by the weight sum, so the scale of the loss does not depend on how confident the teacher
    is overall, only on where its confidence lies.
    """
    if weight is None:
        return per_anchor.mean()
    weight = weight.to(per_anchor.dtype)
    return (per_anchor * weight).sum() / weight.sum().clamp_min(1e-6)


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    """Normalise each channel of a (B, C, H, W) map over batch and space to zero mean and unit std (PKD)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / (std + 1e-6)


def tempered_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float, dim: int) -> torch.Tensor:
    """KL(softmax(teacher / tau) || softmax(student / tau)) along ``dim``, in fp32; ``dim`` is summed away."""
    log_s = F.log_softmax(student.float() / tau, dim=dim)
    log_t = F.log_softmax(teacher.float() / tau, dim=dim)
    return (log_t.exp() * (log_t - log_s)).sum(dim)
