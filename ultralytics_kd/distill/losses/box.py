"""Box imitation: the student's decoded box at each anchor is pulled onto the teacher's with the stock CIoU loss.

LD matches the DFL bin distributions side by side; this term matches the boxes those distributions decode to, with the
same loss the stock box term uses against ground truth (1 - CIoU), so it trains localisation precision, which is what
mAP50-95 rewards. It reads the teacher's boxes as dense pseudo-targets, weighted per anchor by the teacher's confidence
(max class probability): a teacher box at a background anchor says nothing, so the weighting is not optional here. The
box at an anchor is (-left, -top, right, bottom) around the anchor point in stride units, and IoU is invariant to that
shared shift and scale, so no anchor grid is needed; each side is the expectation over its own DFL bins, so teacher
and student may have different ``reg_max`` (1 means plain distances, as in YOLO26 heads).
"""

from __future__ import annotations

import torch
from ultralytics.utils.metrics import bbox_iou

from ultralytics_kd.distill.losses.base import KDTerm, anchor_mean, register_term


def expected_sides(raw: torch.Tensor) -> torch.Tensor:
    """Decode (B, 4 * bins, A) box outputs into (B, A, 4) distances (left, top, right, bottom) in stride units."""
    b, c, a = raw.shape
    bins = c // 4
    dist = raw.float().view(b, 4, bins, a)
    if bins > 1:
        proj = torch.arange(bins, device=raw.device, dtype=dist.dtype).view(1, 1, -1, 1)
        dist = (dist.softmax(2) * proj).sum(2, keepdim=True)
    return dist.squeeze(2).transpose(1, 2)


@register_term
class BoxImitation(KDTerm):
    """1 - CIoU between student and teacher boxes per anchor, averaged with the teacher's confidence as weight.

    Examples:
        >>> import torch
        >>> term = BoxImitation(weight=1.0)
        >>> s = torch.randn(2, 4 * 16, 10)  # (batch, 4 * reg_max, anchors)
        >>> float(term(s, s))
        0.0
    """

    name, item, source = "box", "kdbox_loss", "boxes"

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        anchor_weight: torch.Tensor | None = None,
        teacher_conf: torch.Tensor | None = None,
        **context,
    ) -> torch.Tensor:
        """Return the weighted box imitation loss.

        Args:
            student (torch.Tensor): Student box outputs (B, 4 * reg_max, A).
            teacher (torch.Tensor): Teacher box outputs (B, 4 * reg_max_t, A).
            anchor_weight (torch.Tensor, optional): Per-anchor weights (B, A), used when ``teacher_conf`` is absent.
            teacher_conf (torch.Tensor, optional): Teacher's max class probability per anchor (B, A); the criterion
                always passes it, whatever ``kd_conf_weight`` says.
            **context (Any): Ignored.

        Returns:
            (torch.Tensor): Scalar loss.
        """
        s, t = expected_sides(student), expected_sides(teacher)
        s_box = torch.cat([-s[..., :2], s[..., 2:]], -1)
        t_box = torch.cat([-t[..., :2], t[..., 2:]], -1)
        ciou = bbox_iou(s_box, t_box, xywh=False, CIoU=True).squeeze(-1)  # (B, A)
        weight = teacher_conf if teacher_conf is not None else anchor_weight
        return self.weight * anchor_mean(1.0 - ciou, weight)
