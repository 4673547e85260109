"""Feature mimicking, the first stage of ``kd_init=mimic``: the student's Detect inputs, through 1x1 adapters, regress
the teacher's, each teacher channel standardised with its running mean and std.

Standardising (as PKD does for its Pearson form) gives every channel the same say whatever its scale; the running
statistics let ``transplant.transplant_head`` undo it, so that ``std * adapter(x) + mean`` predicts the teacher's raw
map, which is what the teacher's head reads. The term is not in the recipe registry: the trainer adds it for the mimic
epochs only (``stage = "mimic"``), when it is the whole loss.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ultralytics_kd.distill.inherit import uniform_index
from ultralytics_kd.distill.losses.base import KDTerm

__all__ = ["EntryMimic", "FeatureMimic"]


class FeatureMimic(KDTerm):
    """MSE between adapted student maps and standardised teacher maps, averaged over levels.

    Args:
        weight (float): Loss weight.
        tau (float): Unused.
        momentum (float): Weight of each batch in the running teacher statistics.

    Attributes:
        mean (list[torch.Tensor]): Running per-channel mean of each teacher level (empty before the first batch).
        std (list[torch.Tensor]): Running per-channel std of each teacher level.

    Examples:
        >>> import torch
        >>> term = FeatureMimic()
        >>> t = torch.randn(2, 3, 4, 4) * 5 + 1
        >>> z = (t - t.mean((0, 2, 3), keepdim=True)) / t.std((0, 2, 3), keepdim=True)
        >>> float(term([z], [t])) < 1e-6
        True
    """

    name, item, source = "mimic", "kdmim_loss", "feats"
    stage: ClassVar[str] = "mimic"

    def __init__(self, weight: float = 1.0, tau: float = 1.0, momentum: float = 0.1):
        """Store the weight and the statistics' momentum."""
        super().__init__(weight, tau)
        self.momentum = float(momentum)
        self.mean: list[torch.Tensor] = []
        self.std: list[torch.Tensor] = []

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], **context) -> torch.Tensor:
        """Update the running teacher statistics and return the weighted loss.

        Args:
            student (list[torch.Tensor]): Adapted student maps, one (B, C, H, W) per level.
            teacher (list[torch.Tensor]): Teacher maps with the same shapes.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        loss = 0.0
        for i, (s, t) in enumerate(zip(student, teacher)):
            t = t.detach().float()
            mu, sd = t.mean(dim=(0, 2, 3)), t.std(dim=(0, 2, 3))
            if i < len(self.mean):
                m = self.momentum
                self.mean[i] = (1 - m) * self.mean[i] + m * mu
                self.std[i] = (1 - m) * self.std[i] + m * sd
            else:
                self.mean.append(mu)
                self.std.append(sd)
            target = (t - mu[:, None, None]) / (sd[:, None, None] + 1e-6)
            loss = loss + F.mse_loss(s.float(), target)
        return self.weight * loss / len(student)

    def stats(self) -> dict[str, list[torch.Tensor]]:
        """The running statistics, on CPU, for checkpoints."""
        return {"mean": [m.cpu() for m in self.mean], "std": [s.cpu() for s in self.std]}

    def load_stats(self, stats: dict[str, list[torch.Tensor]], device: torch.device | str = "cpu") -> None:
        """Restore statistics saved by ``stats`` (resume)."""
        self.mean = [m.to(device) for m in stats.get("mean", [])]
        self.std = [s.to(device) for s in stats.get("std", [])]


class EntryMimic(KDTerm):
    """The first stage of a graft (``kd_init=graft``): the student's backbone outputs regress the teacher's, directly.

    The selected neck will read these maps as the teacher's neck reads the teacher's, so there is no adapter: student
    channel ``k`` of a level targets teacher channel ``uniform_index(c_student, c_teacher)[k]``, the channel that weight
    selection pairs it with, in raw units. Each channel's error is divided by that teacher channel's std over the batch
    (at least a tenth of the level's mean std, so that a near-constant channel does not dominate), so every channel has
    about the same say whatever its scale: ``mean(((s - t) / std_t) ** 2)`` per level, averaged over levels.

    Args:
        weight (float): Loss weight.
        tau (float): Unused.

    Examples:
        >>> import torch
        >>> t = torch.randn(2, 8, 4, 4)
        >>> float(EntryMimic()([t[:, ::2]], [t]))  # the selected channels, exactly
        0.0
    """

    name, item, source = "graft", "kdgraft_loss", "entries"
    stage: ClassVar[str] = "mimic"

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], **context) -> torch.Tensor:
        """The weighted loss over levels.

        Args:
            student (list[torch.Tensor]): Student backbone outputs, one (B, C_s, H, W) per entry.
            teacher (list[torch.Tensor]): The teacher's paired outputs (B, C_t, H, W), C_t >= C_s.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        loss = 0.0
        for s, t in zip(student, teacher):
            t = t.detach().float()
            t = t.index_select(1, uniform_index(s.shape[1], t.shape[1]).to(t.device))
            sd = t.std(dim=(0, 2, 3), keepdim=True)
            sd = sd.clamp_min(0.1 * float(sd.mean()) + 1e-6)  # a near-constant channel is not weighted without bound
            loss = loss + F.mse_loss(s.float() / sd, t / sd)
        return self.weight * loss / len(student)
