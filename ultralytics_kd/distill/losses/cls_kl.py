"""Class-logit distillation with a softmax over classes (the seeds' form).

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS DL Workshop 2015
(https://arxiv.org/abs/1503.02531): KL(softmax(t/T) || softmax(s/T)) * T^2, here per anchor over the class axis.

YOLO scores classes with independent sigmoids, so the softmax form discards each anchor's absolute confidence (it only
keeps the ranking between classes) and is degenerate with a single class; ``cls_bce`` is the form that matches YOLO's
loss. It is kept because the seed recipe uses it.
"""

from __future__ import annotations

import torch

from ultralytics_kd.distill.losses.base import KDTerm, anchor_mean, register_term, tempered_kl


@register_term
class ClassKL(KDTerm):
    """Softmax KL between teacher and student class logits, per anchor, times T^2.

    Examples:
        >>> import torch
        >>> term = ClassKL(weight=1.0, tau=4.0)
        >>> s = torch.randn(2, 3, 10)  # (batch, classes, anchors)
        >>> float(term(s, s))
        0.0
    """

    name, item, source = "cls_kl", "kdkl_loss", "scores"

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, anchor_weight: torch.Tensor | None = None, **context
    ) -> torch.Tensor:
        """Return the weighted KL.

        Args:
            student (torch.Tensor): Student class logits (B, nc, A).
            teacher (torch.Tensor): Teacher class logits (B, nc, A).
            anchor_weight (torch.Tensor, optional): Per-anchor weights (B, A); uniform when None.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        t = self.tau
        kl = tempered_kl(student, teacher, t, dim=1)  # (B, A)
        return self.weight * t * t * anchor_mean(kl, anchor_weight)
