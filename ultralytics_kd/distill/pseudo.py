"""Pseudo-labels: the teacher's confident boxes on unlabelled images, as the batch keys the stock loss reads.

Efficient Teacher (Xu et al., "Efficient Teacher: Semi-Supervised Object Detection for YOLOv5", 2023,
https://arxiv.org/abs/2302.07577) trains a YOLO student's own detection loss on the teacher's "reliable" boxes. Here
the teacher's decoded predictions go through the stock NMS at ``kd_pseudo_conf`` and the stock IoU (0.7, the ``iou``
of ``cfg/default.yaml``), and come out as a dataloader's labels: ``batch_idx``, ``cls`` and ``bboxes`` in normalised
xywh. The criterion hands them, with the student's predictions, to the stock ``v8DetectionLoss`` assigner and
box/cls/dfl loss unchanged. An image with no box above the threshold has no target: the stock loss then trains it
as a background image (cls towards 0 everywhere, box and dfl 0).

A teacher box below the threshold is not nothing: it may be an object the teacher is unsure of, and the stock loss
would push the student's scores there to background. Efficient Teacher trains such "uncertain" boxes apart; here
(``kd_pseudo_low``) the anchors whose point lies inside a box scoring between ``kd_pseudo_low`` and the threshold,
and inside no pseudo-label, get no classification gradient (``uncertain_anchors``): they are left out of the
background push rather than given a label.
"""

from __future__ import annotations

import torch
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import xyxy2xywh

__all__ = ["PSEUDO_IOU", "pseudo_item", "pseudo_targets", "uncertain_anchors"]

PSEUDO_IOU = 0.7  # the stock NMS IoU of training-time validation and prediction


def pseudo_item(item: str) -> str:
    """The column of a stock loss item on the pseudo-labels of unlabelled images: ``box_loss`` -> ``upbox_loss``
    (``u`` as every unlabelled column, see ``criterion.unlabeled_item``)."""
    return "up" + item


@torch.no_grad()
def pseudo_targets(
    scores: torch.Tensor, boxes: torch.Tensor, imgsz: tuple[int, int], conf: float, iou: float = PSEUDO_IOU
) -> dict[str, torch.Tensor]:
    """The teacher's boxes that survive the stock NMS, as the labels of a batch.

    Args:
        scores (torch.Tensor): Teacher class logits (B, nc, A).
        boxes (torch.Tensor): Teacher boxes (B, A, 4), pixel xyxy (``criterion.teacher_boxes``).
        imgsz (tuple[int, int]): Height and width of the images in pixels.
        conf (float): Confidence threshold (``kd_pseudo_conf``).
        iou (float): NMS IoU threshold.

    Returns:
        (dict[str, torch.Tensor]): ``batch_idx`` (N,), ``cls`` (N, 1) and ``bboxes`` (N, 4) in xywh normalised by
            ``imgsz``, as the stock loss reads them from a batch; N may be 0.

    Examples:
        >>> s = torch.full((1, 2, 3), -9.0)
        >>> s[0, 1, 2] = 9.0  # class 1 at anchor 2
        >>> b = torch.tensor([[[0, 0, 8, 8], [0, 0, 8, 8], [16, 16, 48, 32]]], dtype=torch.float)
        >>> t = pseudo_targets(s, b, (64, 64), conf=0.5)
        >>> t["cls"].tolist(), t["bboxes"].tolist()
        ([[1.0]], [[0.5, 0.375, 0.5, 0.25]])
    """
    pred = torch.cat([xyxy2xywh(boxes.float()).transpose(1, 2), scores.float().sigmoid()], 1)  # the Detect layout
    kept = non_max_suppression(pred, conf_thres=conf, iou_thres=iou, nc=scores.shape[1])  # (n, 6) xyxy, conf, cls
    det = torch.cat(kept)
    h, w = imgsz
    index = [torch.full((len(d),), i, dtype=det.dtype, device=det.device) for i, d in enumerate(kept)]
    return {
        "batch_idx": torch.cat(index),
        "cls": det[:, 5:6],
        "bboxes": xyxy2xywh(det[:, :4]) / det.new_tensor([w, h, w, h]),
    }


@torch.no_grad()
def uncertain_anchors(
    scores: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, low: float, high: float, iou: float = PSEUDO_IOU
) -> torch.Tensor:
    """The anchors inside an uncertain teacher box and inside no pseudo-label.

    Args:
        scores (torch.Tensor): Teacher class logits (B, nc, A).
        boxes (torch.Tensor): Teacher boxes (B, A, 4), pixel xyxy.
        points (torch.Tensor): Anchor points (A, 2), pixel xy.
        low (float): Confidence from which a box that survives the stock NMS is uncertain (``kd_pseudo_low``).
        high (float): Confidence from which it is a pseudo-label (``kd_pseudo_conf``).
        iou (float): NMS IoU threshold.

    Returns:
        (torch.Tensor): (B, A) bool.

    Examples:
        >>> s = torch.full((1, 1, 3), -9.0)
        >>> s[0, 0, 0], s[0, 0, 2] = 0.0, 9.0  # an uncertain box (conf 0.5) at anchor 0, a sure one at anchor 2
        >>> b = torch.tensor([[[0, 0, 10, 10], [0, 0, 1, 1], [20, 20, 30, 30]]], dtype=torch.float)
        >>> uncertain_anchors(s, b, torch.tensor([[5.0, 5.0], [15.0, 15.0], [25.0, 25.0]]), low=0.3, high=0.7).tolist()
        [[True, False, False]]
    """
    pred = torch.cat([xyxy2xywh(boxes.float()).transpose(1, 2), scores.float().sigmoid()], 1)
    masks = []
    for d in non_max_suppression(pred, conf_thres=low, iou_thres=iou, nc=scores.shape[1]):
        x, y = points[:, 0:1], points[:, 1:2]  # (A, 1) against (n,) boxes
        inside = (x >= d[:, 0]) & (x <= d[:, 2]) & (y >= d[:, 1]) & (y <= d[:, 3])  # (A, n)
        sure = d[:, 4] >= high
        masks.append(inside[:, ~sure].any(1) & ~inside[:, sure].any(1))
    return torch.stack(masks)
