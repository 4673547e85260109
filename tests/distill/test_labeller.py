"""kd_pseudo_from=best: the student's best EMA on val labels the unlabelled images once it scores above the teacher."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from ultralytics.nn.tasks import DetectionModel

from ultralytics_kd.distill.labeller import PseudoLabeller


def _ema(seed: int) -> SimpleNamespace:
    torch.manual_seed(seed)
    return SimpleNamespace(ema=DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval())


def _raw(model: DetectionModel, img: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(img)[1]["scores"]


def test_the_labeller_is_the_best_ema_above_the_teacher():
    """Below the teacher's fitness nothing changes; above it a frozen copy of that epoch's EMA labels the images
    after n_labeled, with the EMA's own outputs; a later, lower fitness keeps it; a higher one replaces it; a later
    change of the live EMA never reaches the copy."""
    img = torch.rand(3, 3, 64, 64)
    labeller = PseudoLabeller(teacher_fitness=0.30)
    first, second = _ema(0), _ema(1)
    assert not labeller.update(SimpleNamespace(fitness=0.25, epoch=0, ema=first))
    assert labeller.model is None and labeller(img, n_labeled=1) is None  # the teacher labels them
    assert labeller.update(SimpleNamespace(fitness=0.35, epoch=1, ema=first)) and labeller.epoch == 2
    out = labeller(img, n_labeled=1)
    assert out["scores"].shape[0] == 2 and not out["scores"].requires_grad
    assert torch.allclose(out["scores"], _raw(first.ema, img[1:]), atol=1e-4)  # fused, same outputs
    assert labeller(img, n_labeled=None) is None  # a batch without unlabelled images
    assert not labeller.update(SimpleNamespace(fitness=0.33, epoch=2, ema=second)) and labeller.epoch == 2
    with torch.no_grad():
        for p in first.ema.parameters():
            p.add_(1.0)  # the live EMA moves on: the copy stays
    assert torch.allclose(labeller(img, 1)["scores"], out["scores"])
    assert labeller.update(SimpleNamespace(fitness=0.40, epoch=3, ema=second)) and labeller.fitness == 0.40
    assert torch.allclose(labeller(img, 1)["scores"], _raw(second.ema, img[1:]), atol=1e-4)
    assert not labeller.update(SimpleNamespace(fitness=None, epoch=4, ema=first))  # an epoch without validation
