"""Every registered block builds, and fuses exactly; parametrised over the registry so new blocks are tested too."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import BaseModel

from tests.nn.conftest import randomize_bn, rel_err
from ultralytics_kd.nn import REGISTRY
from ultralytics_kd.nn.blocks import RepVGG, ShuffleV2

# (c1, c2, *args) for each registered block; a block registered without an entry here fails test_every_block_has_case
CASES = {
    "RepVGG": [(8, 8), (8, 16, 2), (8, 8, 1, 2)],
    "RepGELAN": [(16, 32, 32, 16, 2)],
    "ShuffleV2": [(16, 16), (16, 32, 2)],
    "ShuffleV2Stage": [(16, 32, 3)],
}


def test_every_block_has_case():
    assert set(REGISTRY) <= set(CASES), f"add constructor cases for {set(REGISTRY) - set(CASES)}"


def _fuse_alone(block: nn.Module) -> nn.Module:
    """Fuse a block through the stock BaseModel.fuse (plugin hook included), as Ultralytics would."""
    holder = BaseModel()
    holder.model = nn.Sequential(block)
    holder.info = lambda *a, **k: None  # model_info needs a full model; not what is under test here
    return holder.fuse().model[0]


@pytest.mark.parametrize("name,args", [(n, a) for n, cases in CASES.items() for a in cases])
def test_block_fuses_exactly(name, args):
    block = randomize_bn(REGISTRY[name].cls(*args), seed=len(args)).eval()
    x = torch.randn(2, args[0], 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = block(x)
        n_params = sum(p.numel() for p in block.parameters())
        fused = _fuse_alone(copy.deepcopy(block))
        y_fused = fused(x)
    assert rel_err(y, y_fused) <= 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()), "BatchNorm left after fuse"
    assert not any(getattr(m, "reparameterized", True) is False for m in fused.modules()), "unmerged branch left"
    assert sum(p.numel() for p in fused.parameters()) < n_params


def test_repvgg_merges_to_one_conv():
    block = randomize_bn(RepVGG(8, 8)).eval()
    assert block.bn is not None  # identity branch when c1 == c2 and stride 1
    assert RepVGG(8, 8, s=2).bn is None and RepVGG(8, 16).bn is None
    block.reparameterize()
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].bias is not None
    before = block.conv.weight.clone()
    block.reparameterize()  # idempotent
    assert torch.equal(before, block.conv.weight)


def test_repvgg_identity_grouped():
    block = randomize_bn(RepVGG(8, 8, 1, 4), seed=3).eval()
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        y = block(x)
        block.reparameterize()
        assert rel_err(y, block(x)) <= 1e-5


def test_shufflev2_shapes_and_errors():
    assert ShuffleV2(16, 32, 2)(torch.zeros(1, 16, 8, 8)).shape == (1, 32, 4, 4)
    assert ShuffleV2(16, 16, 1)(torch.zeros(1, 16, 8, 8)).shape == (1, 16, 8, 8)
    with pytest.raises(ValueError, match="c1 == c2"):
        ShuffleV2(16, 32, 1)
    with pytest.raises(ValueError, match="stride"):
        ShuffleV2(16, 16, 3)


def test_channel_shuffle_interleaves():
    from ultralytics_kd.nn.blocks.shufflenet import channel_shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]
