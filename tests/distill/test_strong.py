"""kd_unlabeled_strong: the student's strong photometric view of the unlabelled images (distill/strong.py)."""

from __future__ import annotations

import torch

from ultralytics_kd.distill.strong import strong_unlabeled, strong_view


def test_only_the_unlabelled_images_change_and_a_seed_repeats_them():
    img = torch.rand(5, 3, 48, 64)
    torch.manual_seed(1)
    out = strong_unlabeled(img, n_labeled=2)
    assert out.shape == img.shape and out.dtype == img.dtype and torch.equal(out[:2], img[:2])
    assert all(not torch.allclose(out[i], img[i]) for i in range(2, 5))
    assert out.min() >= 0 and out.max() <= 1
    torch.manual_seed(1)
    assert torch.equal(strong_unlabeled(img, n_labeled=2), out)
    assert strong_unlabeled(img, None) is img and strong_unlabeled(img, 5) is img  # no unlabelled image


def test_the_strong_view_is_photometric_with_cutouts():
    """Grey stays grey under jitter, grayscale and blur (no pixel moves: the boxes hold), so a flat grey image changes
    only by brightness/contrast shifts of the whole image and by the noise of its cutouts."""
    torch.manual_seed(0)
    flat = torch.full((3, 64, 64), 0.5)
    views = [strong_view(flat) for _ in range(40)]
    noisy = [v for v in views if v.std() > 0.01]  # a cutout's uniform noise
    uniform = [v for v in views if v.std() <= 0.01]
    assert noisy and uniform and all(torch.allclose(v, v.mean().expand_as(v), atol=1e-4) for v in uniform)
    edge = torch.zeros(3, 64, 64)
    edge[:, :, 32:] = 1.0
    torch.manual_seed(3)
    out = strong_view(edge)
    assert out[:, :, :20].mean() < out[:, :, 44:].mean()  # the edge stays where it was
