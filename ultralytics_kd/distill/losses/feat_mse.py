"""Plain feature imitation: mean squared error between adapted student maps and teacher maps (the seeds' form).

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (https://arxiv.org/abs/1412.6550): the student's
intermediate features, passed through a small adapter to the teacher's width, regress the teacher's features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ultralytics_kd.distill.losses.base import KDTerm, register_term


@register_term
class FeatureMSE(KDTerm):
    """MSE per feature level (mean over all elements), averaged over levels.

    Examples:
        >>> import torch
        >>> term = FeatureMSE(weight=1.0)
        >>> float(term([torch.zeros(1, 2, 4, 4)], [torch.ones(1, 2, 4, 4)]))
        1.0
    """

    name, item, source = "feat_mse", "kdmse_loss", "feats"

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], **context) -> torch.Tensor:
        """Return the weighted MSE.

        Args:
            student (list[torch.Tensor]): Adapted student maps, one (B, C, H, W) per level.
            teacher (list[torch.Tensor]): Teacher maps with the same shapes.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        loss = sum(F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher))
        return self.weight * loss / len(student)
