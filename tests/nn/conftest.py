"""Shared helpers for the block, registry and fusion tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

MODELS = sorted((Path(__file__).parents[2] / "ultralytics_kd" / "cfg" / "models").glob("*.yaml"))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms: default BN (mean 0, var 1) hides fusion bugs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 2 - 1)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's max magnitude."""
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.fixture(params=MODELS, ids=[p.stem for p in MODELS])
def model_yaml(request) -> Path:
    """Each student YAML shipped in cfg/models."""
    return request.param
