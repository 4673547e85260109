"""Class-logit distillation in YOLO's own sigmoid form.

YOLO trains each class with an independent sigmoid and BCE, so the natural soft target is the teacher's tempered
sigmoid per class: BCE(sigmoid(s/T), sigmoid(t/T)) * T^2, as in the sigmoid-score distillation of e.g. Zheng et al.,
"Localization Distillation for Dense Object Detection", CVPR 2022 (https://arxiv.org/abs/2102.12252, its classification
KD baseline) and Hinton et al. 2015 for the T^2 factor.

The teacher's own binary entropy is subtracted, which makes the value a binary KL: the gradient is exactly that of the
BCE, but the term reads 0 when the student matches the teacher, so the logged column is meaningful.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ultralytics_kd.distill.losses.base import KDTerm, anchor_mean, register_term


@register_term
class ClassBCE(KDTerm):
    """Per-class binary KL between tempered teacher and student sigmoids, summed over classes, times T^2.

    Examples:
        >>> import torch
        >>> term = ClassBCE(weight=1.0, tau=2.0)
        >>> s = torch.randn(2, 3, 10)  # (batch, classes, anchors)
        >>> float(term(s, s))
        0.0
    """

    name, item, source = "cls_bce", "kdcls_loss", "scores"

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, anchor_weight: torch.Tensor | None = None, **context
    ) -> torch.Tensor:
        """Return the weighted binary KL.

        Args:
            student (torch.Tensor): Student class logits (B, nc, A).
            teacher (torch.Tensor): Teacher class logits (B, nc, A).
            anchor_weight (torch.Tensor, optional): Per-anchor weights (B, A); uniform when None.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        t = self.tau
        s_logit, t_logit = student.float() / t, teacher.float() / t
        target = t_logit.sigmoid()
        bce = F.binary_cross_entropy_with_logits(s_logit, target, reduction="none")
        entropy = F.binary_cross_entropy_with_logits(t_logit, target, reduction="none")
        return self.weight * t * t * anchor_mean((bce - entropy).sum(1), anchor_weight)
