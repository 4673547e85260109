"""Channel plans: hand-made Concat pairs with known maps, and the pairs whose channels cannot be paired exactly."""

from __future__ import annotations

import torch
from ultralytics.nn.tasks import DetectionModel

from ultralytics_kd.distill.channels import channel_plan
from ultralytics_kd.distill.inherit import select_weights
from ultralytics_kd.distill.tracing import ChannelTrace


def _model(a: int, b: int, c: int, after: list | None = None) -> DetectionModel:
    """Conv ``a`` and Conv ``b`` side by side, concatenated, read by ``after`` (a Conv ``c`` by default), one-level
    Detect."""
    layers = [
        [-1, 1, "Conv", [a, 3, 2]],  # 0
        [-1, 1, "Conv", [b, 3, 1]],  # 1
        [[0, 1], 1, "Concat", [1]],  # 2
        after or [-1, 1, "Conv", [c, 1, 1]],  # 3
    ]
    return DetectionModel({"nc": 3, "backbone": layers, "head": [[[3], 1, "Detect", ["nc"]]]}, verbose=False)


def test_a_conv_after_a_concat_reads_each_part_through_its_own_map():
    """Student parts 8 + 8 of the teacher's 32 + 16: the reader takes teacher channels 0, 4, ..., 28 of the first part
    and 32, 34, ..., 46 of the second (one index over 16 of 48 would give 0, 3, 6, ...)."""
    s, t = _model(8, 8, 8), _model(32, 16, 16)
    with torch.no_grad():  # hand-made: teacher weight [o, i] = 100 * o + i
        t.model[3].conv.weight.copy_((100 * torch.arange(16)[:, None] + torch.arange(48))[..., None, None])
    select_weights(s, t)
    rows, cols = range(0, 16, 2), [0, 4, 8, 12, 16, 20, 24, 28, 32, 34, 36, 38, 40, 42, 44, 46]
    expected = torch.tensor([[100.0 * o + i for i in cols] for o in rows])
    assert torch.equal(s.model[3].conv.weight[:, :, 0, 0], expected)
    plan, why = channel_plan(s, ChannelTrace.of(t))  # from a trace as well as from the model
    assert why is None and plan["model.3.conv.weight"][1][1].tolist() == cols
    assert plan["model.4.cv2.0.0.conv.weight"][1][1].tolist() == [0, 2, 4, 6, 8, 10, 12, 14]  # the Detect input


def test_a_split_that_cuts_a_concat_elsewhere_is_refused():
    """ADown halves its input: the student's 16 + 16 at the Concat's seam, the teacher's 32 + 16 inside its first part.
    No selection pairs those halves, so the plan refuses, and ``select_weights`` raises with the reason and the fix."""
    adown = [-1, 1, "ADown", [16]]
    s, t = _model(16, 16, 0, adown), _model(32, 16, 0, adown)
    plan, why = channel_plan(s, t)
    assert plan is None and why == "the split in model.3 cuts the teacher's channels where the student's are not cut"
    try:
        select_weights(s, t)
    except ValueError as e:
        assert "cannot be paired with the teacher's (the split in model.3" in str(e) and "kd_init=auto" in str(e)
    else:
        raise AssertionError("select_weights did not refuse")


def test_attention_heads_are_taken_whole_and_other_layouts_refused():
    """YOLO11-n's heads have the teacher's 64 channels: whole heads are taken. Other layouts say where they differ."""
    plan, why = channel_plan(DetectionModel("yolo11n.yaml", nc=3, verbose=False), DetectionModel("yolo11s.yaml", nc=3))
    assert why is None
    qkv = plan["model.10.m.0.attn.qkv.conv.weight"][1][0]  # 2 of the teacher's 4 heads of 128 (q, k, v), whole
    assert qkv.tolist() == list(range(0, 128)) + list(range(256, 384))
    v9 = channel_plan(DetectionModel("yolov9t.yaml", nc=3, verbose=False), DetectionModel("yolov9m.yaml", nc=3))[1]
    assert v9 == "the teacher has no call like `conv2d` in model.2.cv2.conv"
