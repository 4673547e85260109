"""CrossKD: the student's Detect inputs run the frozen teacher's head, and those predictions learn the teacher's own.

Wang et al., "CrossKD: Delivering Cross-Head Knowledge Distillation for Object Detection", CVPR 2024
(https://arxiv.org/abs/2306.11369). Prediction mimicking on the student's own head pulls it between the labels and the
teacher's targets; feature imitation moves every channel, whether or not the teacher's head reads it. Here the adapted
student features feed the teacher's head instead, and its outputs are distilled towards the teacher's: the student's
head trains on the labels alone, and the gradient reaching the student's features is the part that changes the
teacher's predictions. Classes use the tempered binary KL of ``cls_bce`` over every anchor (it carries the teacher's
background, which a confidence weight would drop); boxes the DFL-bin KL of ``ld``, weighted by the teacher's
confidence, on teachers with DFL bins.
"""

from __future__ import annotations

import torch
from torch import nn

from ultralytics_kd.distill.losses.base import KDTerm, register_term
from ultralytics_kd.distill.losses.cls_bce import ClassBCE
from ultralytics_kd.distill.losses.ld import LocalizationDistill

__all__ = ["CrossHeadKD"]


@register_term
class CrossHeadKD(KDTerm):
    """Class and box KD between the teacher head's predictions on adapted student features and on its own.

    Args:
        weight (float): Loss weight.
        tau (float): Temperature of both the class and the box KL.

    Examples:
        >>> import torch
        >>> from ultralytics.nn.modules import Detect
        >>> head = Detect(nc=2, ch=(8, 8)).eval().requires_grad_(False)
        >>> head.stride = torch.tensor([8.0, 16.0])
        >>> t = [torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)]
        >>> own = head.forward_head(t, **head.one2many)
        >>> float(CrossHeadKD()(t, t, teacher_head=head, teacher_preds=own)) < 1e-6
        True
    """

    name, item, source = "crosskd", "kdxkd_loss", "feats"

    def __init__(self, weight: float = 1.0, tau: float = 2.0):
        """Build the class and box parts at unit weight; ``weight`` scales their sum."""
        super().__init__(weight, tau)
        self.cls, self.box = ClassBCE(1.0, tau), LocalizationDistill(1.0, tau)

    def forward(
        self,
        student: list[torch.Tensor],
        teacher: list[torch.Tensor],
        teacher_head: nn.Module | None = None,
        teacher_preds: dict[str, torch.Tensor] | None = None,
        anchor_weight: torch.Tensor | None = None,
        **context,
    ) -> torch.Tensor:
        """Return the weighted cross-head loss.

        Args:
            student (list[torch.Tensor]): Student Detect inputs through the adapters, one (B, C_t, H, W) per level.
            teacher (list[torch.Tensor]): Teacher Detect inputs (unused: the teacher's predictions are the target).
            teacher_head (nn.Module): The teacher's frozen Detect head.
            teacher_preds (dict[str, torch.Tensor]): The teacher's own one-to-many ``scores`` and ``boxes``.
            anchor_weight (torch.Tensor, optional): Per-anchor weights (B, A) for the box part; uniform when None.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        if teacher_head is None or teacher_preds is None:
            raise ValueError("crosskd needs the teacher's Detect head and predictions (KDDetectionLoss passes them)")
        dtype = next(teacher_head.parameters()).dtype
        cross = teacher_head.forward_head([s.to(dtype) for s in student], **teacher_head.one2many)
        loss = self.cls(cross["scores"], teacher_preds["scores"])
        if teacher_head.reg_max > 1:
            loss = loss + self.box(cross["boxes"], teacher_preds["boxes"], anchor_weight=anchor_weight)
        return self.weight * loss
