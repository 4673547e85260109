"""Re-parameterise plugin blocks inside Ultralytics' own ``model.fuse()``.

Ultralytics calls ``fuse()`` before predict, val and export. The hook runs every module's ``reparameterize()`` (the
duck-typed protocol of timm and MobileOne: merge training-time branches into one conv, idempotently) before the stock
Conv+BN folding, and extends ``is_fused()`` so that a model with an unmerged plugin block does not count as fused.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from ultralytics.nn import tasks
from ultralytics.utils.torch_utils import fuse_conv_and_bn

from ultralytics_kd.compat import is_qat

__all__ = ["fuse_branches", "install_fuse_hook", "reparameterize", "unfused_blocks"]


def unfused_blocks(model: nn.Module) -> list[nn.Module]:
    """Return the modules that still have training-time branches to merge."""
    return [m for m in model.modules() if hasattr(m, "reparameterize") and not getattr(m, "reparameterized", True)]


def reparameterize(model: nn.Module) -> nn.Module:
    """Merge the branches of every re-parameterisable block in ``model``, in place; a no-op when already merged."""
    if is_qat(model):  # merged branches have no per-channel rescale for QAT ranges; stock fuse skips RepConv likewise
        return model
    for m in unfused_blocks(model):
        m.reparameterize()
    return model


def fuse_branches(branches: list[nn.Sequential | nn.BatchNorm2d], conv: nn.Conv2d) -> nn.Conv2d:
    """Sum conv-BN branches (and identity BNs) of one block into a single conv with bias, exactly (RepVGG, eq. 3-4).

    Args:
        branches (list): ``nn.Sequential(conv, bn)`` branches with odd square kernels up to ``conv``'s size, centred,
            and bare ``nn.BatchNorm2d`` for identity branches (input channels equal output channels, stride 1).
        conv (nn.Conv2d): The largest branch's conv, giving the fused conv's shape, stride, padding and groups.

    Returns:
        (nn.Conv2d): A conv with bias whose output equals the sum of the branches' outputs.
    """
    k = conv.kernel_size[0]
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, k, conv.stride, conv.padding, groups=conv.groups, bias=True)
    weight = torch.zeros_like(fused.weight)
    bias = torch.zeros_like(fused.bias)
    for b in branches:
        if isinstance(b, nn.BatchNorm2d):  # identity: a centred one-hot kernel per channel, then folded with its BN
            c_per_group = conv.in_channels // conv.groups
            eye = nn.Conv2d(conv.in_channels, conv.out_channels, k, 1, k // 2, groups=conv.groups, bias=False)
            eye.weight.data.zero_()
            idx = torch.arange(conv.out_channels)
            eye.weight.data[idx, idx % c_per_group, k // 2, k // 2] = 1.0
            f = fuse_conv_and_bn(eye.to(weight.device), b)
        else:
            f = fuse_conv_and_bn(b[0], b[1])
        pad = (k - f.kernel_size[0]) // 2  # a 1x1 kernel sits at the centre of the kxk one
        weight += nn.functional.pad(f.weight.detach(), [pad] * 4)
        bias += f.bias.detach()
    fused.weight.data.copy_(weight)
    fused.bias.data.copy_(bias)
    return fused.requires_grad_(False)


def install_fuse_hook() -> None:
    """Wrap ``BaseModel.fuse`` and ``BaseModel.is_fused`` once; later calls are no-ops."""
    base = tasks.BaseModel
    if getattr(base.fuse, "_ultralytics_kd", False):
        return
    stock_fuse, stock_is_fused = base.fuse, base.is_fused

    @functools.wraps(stock_fuse)
    def fuse(self, *args, **kwargs):
        reparameterize(self)  # before stock Conv+BN folding, which would otherwise fold each branch separately
        return stock_fuse(self, *args, **kwargs)

    @functools.wraps(stock_is_fused)
    def is_fused(self):
        return stock_is_fused(self) and (is_qat(self) or not unfused_blocks(self))

    fuse._ultralytics_kd = is_fused._ultralytics_kd = True
    base.fuse, base.is_fused = fuse, is_fused
