"""Structural re-parameterisation blocks: RepVGG and a GELAN block built on it."""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv, RepConv, RepNCSPELAN4

from ultralytics_kd.nn.fuse import fuse_branches
from ultralytics_kd.nn.registry import register_block


def _conv_bn(c1: int, c2: int, k: int, s: int, g: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2))


@register_block("RepVGG")
class RepVGG(nn.Module):
    """RepVGG block: 3x3 conv-BN + 1x1 conv-BN + identity BN, summed, then the activation.

    Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021. The identity branch exists only when
    ``c1 == c2`` and ``s == 1``. ``reparameterize()`` merges the branches into one 3x3 conv with bias, exactly: the 1x1
    kernel is zero-padded to the centre of a 3x3 one and the identity becomes a centred one-hot kernel. Unlike stock
    ``ultralytics.nn.modules.RepConv`` (identity BN off by default), the identity branch is on whenever it fits.

    Args:
        c1 (int): Input channels.
        c2 (int): Output channels.
        s (int): Stride.
        g (int): Groups.
        act (bool | nn.Module): ``True`` for the model's default activation, ``False`` for none, or a module.
    """

    def __init__(self, c1: int, c2: int, s: int = 1, g: int = 1, act: bool | nn.Module = True):
        super().__init__()
        self.conv3 = _conv_bn(c1, c2, 3, s, g)
        self.conv1 = _conv_bn(c1, c2, 1, s, g)
        self.bn = nn.BatchNorm2d(c1) if c1 == c2 and s == 1 else None
        self.act = Conv.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    @property
    def reparameterized(self) -> bool:
        """Whether the branches have been merged into ``self.conv``."""
        return hasattr(self, "conv")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the merged conv, or the sum of the training-time branches."""
        if self.reparameterized:
            return self.act(self.conv(x))
        y = self.conv3(x) + self.conv1(x)
        return self.act(y + self.bn(x) if self.bn is not None else y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge all branches into one 3x3 conv with bias; idempotent."""
        if self.reparameterized:
            return
        branches = [self.conv3, self.conv1] + ([self.bn] if self.bn is not None else [])
        self.conv = fuse_branches(branches, self.conv3[0])
        del self.conv3, self.conv1, self.bn


@register_block("RepGELAN")
class RepGELAN(RepNCSPELAN4):
    """GELAN block (YOLOv9's RepNCSPELAN4) whose RepConvs are the plugin's ``RepVGG`` with its identity branch.

    Wang et al., "YOLOv9: Learning What You Want to Learn Using Programmable Gradient Information", 2024. The stock
    block's layout (1x1 split, two RepCSP + 3x3 stages, 1x1 merge) is kept by subclassing; only the re-parameterisable
    convs are swapped, so stock fusion folds the rest.

    Args:
        c1 (int): Input channels.
        c2 (int): Output channels.
        c3 (int): Channels after the first 1x1 conv (split in two).
        c4 (int): Channels of each RepCSP stage.
        n (int): RepCSP bottlenecks per stage.
    """

    def __init__(self, c1: int, c2: int, c3: int, c4: int, n: int = 1):
        super().__init__(c1, c2, c3, c4, n)
        for parent in list(self.modules()):
            for name, child in parent.named_children():
                if isinstance(child, RepConv):
                    c_in, c_out = child.conv1.conv.in_channels, child.conv1.conv.out_channels
                    setattr(parent, name, RepVGG(c_in, c_out, child.conv1.conv.stride[0], child.g))
