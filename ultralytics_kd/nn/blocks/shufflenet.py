"""ShuffleNetV2 units and stages, as YAML blocks for light backbones."""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv

from ultralytics_kd.nn.registry import register_block


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave channels across ``groups`` so that information crosses the two branches of the next unit."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


@register_block("ShuffleV2")
class ShuffleV2(nn.Module):
    """ShuffleNetV2 unit (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", ECCV
    2018, Fig. 3c/3d).

    Stride 1: split the channels in half, pass one half through, run 1x1 -> depthwise 3x3 -> 1x1 on the other, concat
    and shuffle (``c1 == c2``). Stride 2: both branches downsample (depthwise 3x3 s2 -> 1x1, and 1x1 -> depthwise 3x3
    s2 -> 1x1), concat to ``c2`` and shuffle. Every conv is a stock ``Conv`` (conv-BN-act), so stock fusion folds it.

    Args:
        c1 (int): Input channels.
        c2 (int): Output channels (even).
        s (int): Stride, 1 or 2.
    """

    def __init__(self, c1: int, c2: int, s: int = 1):
        super().__init__()
        if s not in (1, 2):
            raise ValueError(f"ShuffleV2 stride must be 1 or 2, got {s}")
        if c2 % 2 or (s == 1 and c1 != c2):
            raise ValueError(f"ShuffleV2 needs an even c2 and, at stride 1, c1 == c2; got c1={c1}, c2={c2}, s={s}")
        self.s = s
        c_ = c2 // 2
        if s == 2:
            self.branch1 = nn.Sequential(Conv(c1, c1, 3, 2, g=c1, act=False), Conv(c1, c_, 1))
        c_in = c1 if s == 2 else c_
        self.branch2 = nn.Sequential(Conv(c_in, c_, 1), Conv(c_, c_, 3, s, g=c_, act=False), Conv(c_, c_, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run both branches, concatenate and shuffle."""
        if self.s == 1:
            x1, x2 = x.chunk(2, 1)
            y = torch.cat((x1, self.branch2(x2)), 1)
        else:
            y = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(y, 2)


@register_block("ShuffleV2Stage", repeats=True)
class ShuffleV2Stage(nn.Sequential):
    """A ShuffleNetV2 stage: one stride-2 unit then ``n - 1`` stride-1 units (the paper's Table 5 stages).

    Its output is one YAML layer, so a head can reference the stage's index as P3/P4/P5.

    Args:
        c1 (int): Input channels.
        c2 (int): Output channels (even).
        n (int): Units in the stage (depth-scaled by ``depth_multiple``).
    """

    def __init__(self, c1: int, c2: int, n: int = 4):
        super().__init__(ShuffleV2(c1, c2, 2), *(ShuffleV2(c2, c2, 1) for _ in range(max(n, 1) - 1)))
