"""Register your own block and use it by name in a model YAML, with stock width/depth scaling and fusion.

python examples/register_block.py
"""

import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from ultralytics_kd import register_block
from ultralytics_kd.nn.fuse import fuse_branches


@register_block("DWRep")
class DWRep(nn.Module):
    """Depthwise 3x3 + depthwise 1x1 branches (summed) then a pointwise conv: merges to one depthwise 3x3 at fuse()."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.dw3 = nn.Sequential(nn.Conv2d(c1, c1, 3, 1, 1, groups=c1, bias=False), nn.BatchNorm2d(c1))
        self.dw1 = nn.Sequential(nn.Conv2d(c1, c1, 1, 1, 0, groups=c1, bias=False), nn.BatchNorm2d(c1))
        self.pw = nn.Conv2d(c1, c2, 1)
        self.act = nn.SiLU()

    @property
    def reparameterized(self) -> bool:
        return hasattr(self, "dw")

    def forward(self, x):
        y = self.dw(x) if self.reparameterized else self.dw3(x) + self.dw1(x)
        return self.act(self.pw(self.act(y)))

    def reparameterize(self):
        if not self.reparameterized:
            self.dw = fuse_branches([self.dw3, self.dw1], self.dw3[0])
            del self.dw3, self.dw1


YAML = {
    "nc": 3,
    "scales": {"n": [0.5, 0.25, 1024]},
    "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "DWRep", [128]], [-1, 1, "Conv", [128, 3, 2]]],
    "head": [[-1, 1, "Conv", [256, 3, 2]], [-1, 1, "Conv", [512, 3, 2]], [[2, 3, 4], 1, "Detect", ["nc"]]],
}

if __name__ == "__main__":
    model = DetectionModel(YAML).eval()
    print("DWRep channels after width scaling:", model.model[1].pw.out_channels)  # make_divisible(128 * 0.25, 8)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before = model(x)[0]
        model.fuse()
        print("fused; max |difference| =", (model(x)[0] - before).abs().max().item())
