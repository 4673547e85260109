"""The registry hook: plugin YAMLs build with stock channel bookkeeping; stock YAMLs are untouched; errors are clear."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn
from ultralytics.nn import tasks
from ultralytics.nn.tasks import DetectionModel

from tests.nn.conftest import rel_err
from ultralytics_kd import register_block
from ultralytics_kd.nn import REGISTRY
from ultralytics_kd.nn.blocks import ShuffleV2Stage
from ultralytics_kd.nn.registry import registered_blocks

STOCK = ["yolov8n.yaml", "yolov9t.yaml", "yolo11n.yaml", "yolo26n.yaml"]


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("nc", [3, 80])
def test_student_yaml_builds(model_yaml, nc):
    model = DetectionModel(str(model_yaml), nc=nc, verbose=False)
    n = _n_params(model)
    print(f"{model_yaml.stem} nc={nc}: {n:,} params")
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    if "shufflev2" in model_yaml.stem and nc == 80:
        assert n <= 3.2e6
    types = {type(m).__name__ for m in model.modules()}
    assert types & set(REGISTRY), "a student YAML should use the plugin's blocks"
    with torch.no_grad():
        y = model.eval()(torch.rand(1, 3, 64, 64))[0]
    assert y.shape == (1, 4 + nc, 84)


@pytest.mark.parametrize("name", STOCK)
def test_stock_yaml_unchanged(name):
    """With the plugin imported, a stock YAML builds the same modules and outputs as the unhooked stock parser."""
    torch.manual_seed(0)
    hooked = DetectionModel(name, nc=5, verbose=False)
    stock_parse, tasks.parse_model = tasks.parse_model, tasks.parse_model.__wrapped__
    try:
        torch.manual_seed(0)
        stock = DetectionModel(name, nc=5, verbose=False)
    finally:
        tasks.parse_model = stock_parse
    assert [type(m) for m in hooked.modules()] == [type(m) for m in stock.modules()]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = stock.eval()(x)[0], hooked.eval()(x)[0]
        assert torch.equal(a, b)
        hooked.fuse(verbose=False)
        assert rel_err(a, hooked(x)[0]) <= 1e-4
    assert hooked.is_fused()
    assert registered_blocks(hooked) == []  # a stock model: the INT8 export keeps Ultralytics' own quantization


def _yaml(rows, **extra) -> dict:
    head = [[-1, 1, "Conv", [32, 3, 2]], [-1, 1, "Conv", [64, 3, 2]], [[-1], 1, "Detect", ["nc"]]]
    return {"nc": 2, "backbone": [[-1, 1, "Conv", [16, 3, 2]], *rows], "head": head, **extra}


def test_width_depth_scaling_like_stock_rows():
    d = _yaml([[-1, 6, "ShuffleV2Stage", [64]]], scales={"s": [0.5, 0.25, 1024]}, scale="s")
    model = DetectionModel(d, verbose=False)
    stage = model.model[1]
    assert isinstance(stage, ShuffleV2Stage) and stage.type == "ShuffleV2Stage"
    assert len(stage) == 3  # n=6 * depth 0.5
    assert stage[0].branch1[1].conv.out_channels * 2 == 16  # make_divisible(64 * 0.25, 8)
    assert model.model[2].conv.in_channels == 16  # the next stock row saw the right channel count


def test_unknown_block_error_names_row_and_registry():
    with pytest.raises(ValueError, match=r"(?s)row 1 .*'NoSuchBlock'.*Registered ultralytics_kd blocks: .*RepVGG"):
        DetectionModel(_yaml([[-1, 1, "NoSuchBlock", [32]]]), verbose=False)


def test_bad_block_args_error_names_row():
    with pytest.raises(ValueError, match=r"row 1 .*ShuffleV2.*failed: ValueError: ShuffleV2 stride"):
        DetectionModel(_yaml([[-1, 1, "ShuffleV2", [16, 3]]]), verbose=False)


def test_register_refuses_stock_clash_unless_override():
    class Mine(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, 1)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(ValueError, match="stock Ultralytics module"):
        register_block("C2f")(Mine)
    with pytest.raises(ValueError, match="already registered"):
        register_block("RepVGG")(Mine)
    try:
        register_block("ADown", override=True)(Mine)
        model = DetectionModel(_yaml([[-1, 1, "ADown", [32]]]), verbose=False)
        assert isinstance(model.model[1], Mine)
    finally:
        REGISTRY.pop("ADown")
    assert type(DetectionModel(_yaml([[-1, 1, "ADown", [32]]]), verbose=False).model[1]).__name__ == "ADown"


def test_user_block_in_yaml_file(tmp_path):
    @register_block("TinyUserBlock")
    class TinyUserBlock(nn.Module):
        def __init__(self, c1, c2, k=3):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, padding=k // 2)

        def forward(self, x):
            return self.conv(x)

    try:
        f = tmp_path / "user.yaml"
        f.write_text(yaml.safe_dump(_yaml([[-1, 1, "TinyUserBlock", [24, 5]]])))
        model = DetectionModel(str(f), verbose=False)
        conv = model.model[1].conv
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (16, 24, (5, 5))
        assert registered_blocks(model) == [model.model[1]]
    finally:
        REGISTRY.pop("TinyUserBlock")
