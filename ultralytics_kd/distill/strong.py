"""A stronger view of the unlabelled images for the student than for its teacher (``kd_unlabeled_strong``).

Unbiased Teacher (Liu et al., "Unbiased Teacher for Semi-Supervised Object Detection", ICLR 2021,
https://arxiv.org/abs/2102.09480) labels an unlabelled image from a weakly augmented view and trains the student on a
strongly augmented one. The strong augmentations are photometric, so the boxes hold in both views: colour jitter,
grayscale, Gaussian blur and cutout. The student then has to find on a harder view what its teacher sees on an easy
one, which is what makes such labels teach more than the teacher's own outputs on the same view.

Here the weak view is the training batch as the stock pipeline made it (mosaic, flips, HSV): the teacher, and the
pseudo-labeller, see it; the student's unlabelled images (those after ``n_labeled``) are then changed in place with
the probabilities and ranges of Unbiased Teacher's recipe. Labelled images are never touched. The randomness is
torch's own generator, so a seeded run repeats.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

__all__ = ["strong_unlabeled", "strong_view"]

JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue (torchvision's ColorJitter ranges)
ERASE = (
    (0.7, (0.05, 0.2), (0.3, 3.3)),
    (0.5, (0.02, 0.2), (0.1, 6.0)),
    (0.3, (0.02, 0.2), (0.05, 8.0)),
)  # p, area, aspect


def _u(lo: float, hi: float) -> float:
    return float(torch.empty(()).uniform_(lo, hi))


def _p(p: float) -> bool:
    return float(torch.rand(())) < p


def _erase(img: torch.Tensor, area: tuple[float, float], aspect: tuple[float, float]) -> torch.Tensor:
    """Fill one random rectangle of ``img`` (3, H, W) with uniform noise: ``area`` is its share of the image, its
    aspect ratio is log-uniform in ``aspect`` (torchvision's RandomErasing with ``value='random'``)."""
    _, h, w = img.shape
    for _ in range(10):  # as RandomErasing: retry until the rectangle fits
        a = _u(*area) * h * w
        r = float(torch.empty(()).uniform_(*torch.tensor(aspect).log().tolist()).exp())
        eh, ew = round((a * r) ** 0.5), round((a / r) ** 0.5)
        if 0 < eh < h and 0 < ew < w:
            i, j = int(torch.randint(0, h - eh + 1, ())), int(torch.randint(0, w - ew + 1, ()))
            return F.erase(img, i, j, eh, ew, torch.rand(3, eh, ew, dtype=img.dtype, device=img.device))
    return img


def strong_view(img: torch.Tensor) -> torch.Tensor:
    """One image's strong view: colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur (p 0.5, sigma 0.1-2), then
    three cutouts (p 0.7, 0.5, 0.3), as Unbiased Teacher's strong augmentation.

    Args:
        img (torch.Tensor): (3, H, W) float image in [0, 1].

    Returns:
        (torch.Tensor): The changed image, same shape and dtype, in [0, 1].

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> out = strong_view(torch.full((3, 32, 32), 0.5))
        >>> out.shape, bool(out.min() >= 0 and out.max() <= 1)
        (torch.Size([3, 32, 32]), True)
    """
    x = img
    if _p(0.8):
        b, c, s, h = JITTER
        for fn, f in zip(
            (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue),
            (_u(1 - b, 1 + b), _u(1 - c, 1 + c), _u(1 - s, 1 + s), _u(-h, h)),
        ):
            x = fn(x, f)
    if _p(0.2):
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if _p(0.5):
        x = F.gaussian_blur(x, kernel_size=[9, 9], sigma=[_u(0.1, 2.0)] * 2)
    for p, area, aspect in ERASE:
        if _p(p):
            x = _erase(x, area, aspect)
    return x.clamp(0, 1)


def strong_unlabeled(img: torch.Tensor, n_labeled: int | None) -> torch.Tensor:
    """The batch with a strong view of each unlabelled image (those after ``n_labeled``); the labelled images as
    they were. Call it after the teacher (and the pseudo-labeller) saw the batch."""
    if n_labeled is None or n_labeled >= len(img):
        return img
    strong = torch.stack([strong_view(x) for x in img[n_labeled:].float()]).to(img.dtype)
    return torch.cat([img[:n_labeled], strong])
