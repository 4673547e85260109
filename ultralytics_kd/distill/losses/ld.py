"""Localization distillation (LD) between DFL bin distributions.

Zheng et al., "Localization Distillation for Dense Object Detection", CVPR 2022 (https://arxiv.org/abs/2102.12252):
each box side is a distribution over ``reg_max`` bins (the DFL head); the student's tempered softmax over bins is
pulled towards the teacher's with KL * T^2. Teacher and student must share ``reg_max`` (the trainer switches the term
off with a warning otherwise). The paper restricts LD to a "valuable localization region"; here anchors are instead
weighted by the teacher's confidence when the recipe asks for it.
"""

from __future__ import annotations

import torch

from ultralytics_kd.distill.losses.base import KDTerm, anchor_mean, register_term, tempered_kl


@register_term
class LocalizationDistill(KDTerm):
    """KL between tempered teacher and student DFL bin distributions, averaged over the 4 box sides, times T^2.

    Examples:
        >>> import torch
        >>> term = LocalizationDistill(weight=1.0, tau=2.0)
        >>> s = torch.randn(2, 4 * 16, 10)  # (batch, 4 * reg_max, anchors)
        >>> float(term(s, s))
        0.0
    """

    name, item, source = "ld", "kdld_loss", "boxes"

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, anchor_weight: torch.Tensor | None = None, **context
    ) -> torch.Tensor:
        """Return the weighted LD loss.

        Args:
            student (torch.Tensor): Student box distributions (B, 4 * reg_max, A), side-major as the Detect head emits.
            teacher (torch.Tensor): Teacher box distributions, same shape.
            anchor_weight (torch.Tensor, optional): Per-anchor weights (B, A); uniform when None.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        b, c, a = student.shape
        t = self.tau
        kl = tempered_kl(student.view(b, 4, c // 4, a), teacher.view(b, 4, c // 4, a), t, dim=2).mean(1)  # (B, A)
        return self.weight * t * t * anchor_mean(kl, anchor_weight)
