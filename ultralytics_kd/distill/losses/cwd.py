"""Channel-wise distillation (CWD).

Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021 (https://arxiv.org/abs/2011.13256):
each channel's activation map is turned into a spatial distribution with a tempered softmax, and the student's is pulled
towards the teacher's with KL * T^2, averaged over channels and images. So the student learns *where* each teacher
channel fires rather than its raw magnitude.

With ``norm=True`` both maps are first normalised per channel to zero mean and unit variance, as in PKD (Cao et al.,
"PKD: General Distillation Framework for Object Detectors via Pearson Correlation Coefficient", NeurIPS 2022,
https://arxiv.org/abs/2207.02039), which removes magnitude gaps between heterogeneous teachers and students.
"""

from __future__ import annotations

import torch

from ultralytics_kd.distill.losses.base import KDTerm, channel_norm, register_term, tempered_kl


@register_term
class ChannelWiseDistill(KDTerm):
    """CWD: KL between per-channel spatial softmaxes, times T^2, averaged over levels.

    Args:
        weight (float): Loss weight.
        tau (float): Temperature of the spatial softmax.
        norm (bool): Normalise channels first (PKD).

    Examples:
        >>> import torch
        >>> term = ChannelWiseDistill(weight=1.0, tau=1.0)
        >>> x = torch.randn(2, 4, 5, 5)
        >>> float(term([x], [x]))
        0.0
    """

    name, item, source = "cwd", "kdcwd_loss", "feats"

    def __init__(self, weight: float = 1.0, tau: float = 1.0, norm: bool = False):
        """Store weight, temperature and whether to normalise channels."""
        super().__init__(weight, tau)
        self.norm = norm

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], **context) -> torch.Tensor:
        """Return the weighted CWD loss.

        Args:
            student (list[torch.Tensor]): Adapted student maps, one (B, C, H, W) per level.
            teacher (list[torch.Tensor]): Teacher maps with the same shapes.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        t, loss = self.tau, 0.0
        for s, tc in zip(student, teacher):
            s, tc = s.float(), tc.float()
            if self.norm:
                s, tc = channel_norm(s), channel_norm(tc)
            loss = loss + tempered_kl(s.flatten(2), tc.flatten(2), t, dim=2).mean()  # over (B, C)
        return self.weight * t * t * loss / len(student)
