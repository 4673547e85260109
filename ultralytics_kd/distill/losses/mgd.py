"""Masked generative distillation (MGD), with PKD's normalised error.

Yang et al., "Masked Generative Distillation", ECCV 2022 (https://arxiv.org/abs/2205.01529): the student's aligned
feature map loses a random part of its locations and a small generator (3x3 conv, ReLU, 3x3 conv) must rebuild the
teacher's whole map from what is left. Imitating the teacher pixel by pixel asks the student to copy it; rebuilding it
from a masked map asks the student's features to carry enough to reconstruct it, which the paper finds works better
on detection. Mask and generator live in the term's connector (``MaskedGenerator``), trained with the student and
dropped afterwards; the student's deployed model is unchanged.

The error is PKD's (Cao et al., NeurIPS 2022, https://arxiv.org/abs/2207.02039): both maps are normalised per channel
to zero mean and unit variance before the MSE, so the value does not depend on the teacher's feature scale (MGD's
weight of 2e-5 on a summed error was tuned for one detector's scale; this one needs none).
"""

from __future__ import annotations

import torch
from torch import nn

from ultralytics_kd.distill.losses.base import KDTerm, channel_norm, register_term

__all__ = ["MaskedGenerativeDistill", "MaskedGenerator"]


class MaskedGenerator(nn.Module):
    """Drop a random ``ratio`` of the student map's locations (training only), then regenerate the teacher's map.

    The generator is MGD's (3x3 conv, ReLU, 3x3 conv) but runs at the student's width and widens in its last conv: the
    paper aligns to the teacher's width first, which on a YOLOv9-s teacher would cost about one more student forward
    per step. Masking before a 1x1 alignment or after it drops the same locations.

    Args:
        c_student (int): Student channels.
        c_teacher (int): Teacher channels.
        ratio (float): Fraction of locations masked in training (MGD's 0.65 for detection).

    Examples:
        >>> import torch
        >>> MaskedGenerator(8, 16)(torch.zeros(2, 8, 4, 4)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(self, c_student: int, c_teacher: int, ratio: float = 0.65):
        """Build the two-conv generator."""
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"MGD mask ratio {ratio} must be in [0, 1)")
        self.ratio = ratio
        self.generate = nn.Sequential(
            nn.Conv2d(c_student, c_student, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_student, c_teacher, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the generated teacher-width map; in training, from the map with locations masked."""
        if self.training and self.ratio > 0:
            keep = torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) >= self.ratio
            x = x * keep.to(x.dtype)
        return self.generate(x)


@register_term
class MaskedGenerativeDistill(KDTerm):
    """MSE between channel-normalised generated student maps and teacher maps, averaged over levels.

    The generated maps come from the term's connector, ``MaskedGenerator``; the term itself compares what it is given,
    so a student that already equals its teacher reads 0.

    Examples:
        >>> import torch
        >>> x = torch.randn(2, 4, 5, 5)
        >>> float(MaskedGenerativeDistill()([x], [x]))
        0.0
    """

    name, item, source = "mgd", "kdmgd_loss", "feats"

    @staticmethod
    def connector(c_student: int, c_teacher: int) -> nn.Module:
        """The masked generator that maps one student level to the teacher's (see ``KDTerm.connector``)."""
        return MaskedGenerator(c_student, c_teacher)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], **context) -> torch.Tensor:
        """Return the weighted loss.

        Args:
            student (list[torch.Tensor]): Generated student maps, one (B, C, H, W) per level.
            teacher (list[torch.Tensor]): Teacher maps with the same shapes.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        loss = sum((channel_norm(s.float()) - channel_norm(t.float())).pow(2).mean() for s, t in zip(student, teacher))
        return self.weight * loss / len(student)
