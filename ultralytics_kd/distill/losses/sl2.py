"""Score-weighted L2 feature imitation, the loss of Ultralytics' native ``distill_model=`` distillation.

Re-implemented here (same formula, no shared code) so our trainer can compare it like-for-like with the other terms,
under the same adapters, schedule and guard: per level, the squared error between adapted student and teacher maps is
weighted at each location by the teacher's confidence there (max class probability) and normalised by the total weight
times the channel count; levels are summed, as native does. Native averages the one-to-many and one-to-one scores of
end-to-end teachers; here only the one-to-many scores are used, as for every other term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ultralytics_kd.distill.losses.base import KDTerm, register_term


@register_term
class ScoreWeightedL2(KDTerm):
    """Teacher-confidence-weighted MSE per level, summed over levels.

    Examples:
        >>> import torch
        >>> term = ScoreWeightedL2(weight=1.0)
        >>> s, t = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
        >>> float(term([s], [t], level_weight=[torch.ones(1, 1, 4)]))
        1.0
    """

    name, item, source = "sl2", "kdsl2_loss", "feats"

    def forward(
        self,
        student: list[torch.Tensor],
        teacher: list[torch.Tensor],
        level_weight: list[torch.Tensor] | None = None,
        **context,
    ) -> torch.Tensor:
        """Return the weighted loss.

        Args:
            student (list[torch.Tensor]): Adapted student maps, one (B, C, H, W) per level.
            teacher (list[torch.Tensor]): Teacher maps with the same shapes.
            level_weight (list[torch.Tensor]): Teacher confidence per level, (B, 1, H*W) each.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        if level_weight is None:
            raise ValueError("sl2 needs the teacher's per-level confidence ('level_weight')")
        loss = 0.0
        for s, t, w in zip(student, teacher, level_weight):
            c = s.shape[1]
            mse = F.mse_loss(s.float().flatten(2), t.float().flatten(2), reduction="none")  # (B, C, H*W)
            w = w.float()
            loss = loss + (mse * w).sum() / (w.sum() * c + 1e-9)
        return self.weight * loss
