"""Channel traces: one forward pass recorded without changing the model, each call keyed by the module that made it."""

from __future__ import annotations

import torch
from ultralytics.nn.tasks import DetectionModel

from ultralytics_kd.distill.tracing import ChannelTrace, channel_rule


def test_a_trace_leaves_the_model_as_it_was():
    m = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    m.model[2].train()  # mixed modes come back as they were
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ChannelTrace.of(m)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # BN statistics and batch counts too
    assert not m.training and m.model[2].training and not m.model[3].training


def test_calls_are_keyed_by_layer_module_and_count():
    """Keys that two widths of one layout share: Ultralytics' Conv blocks share one SiLU module, whose calls are keyed
    by the block that called it; C2f's own split by the block."""
    m = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    trace = ChannelTrace.of(m)
    calls = {op.key: op for op in trace.ops}
    assert {(0, "act", "silu", 1), (1, "act", "silu", 1), (2, "cv1.act", "silu", 1)} <= calls.keys()
    conv = calls[(0, "conv", "conv2d", 1)]
    assert trace.params[conv.ins[1]] == "model.0.conv.weight" and trace.shapes[conv.outs[0]] == (1, 16, 32, 32)
    assert channel_rule(conv, trace.shapes, trace.params)[0] == "conv"
    split = calls[(2, "", "chunk", 1)]
    assert [trace.shapes[o][1] for o in split.outs] == [16, 16]
    assert channel_rule(split, trace.shapes, trace.params) == ("split", split.ins[0])
    assert trace.shapes[trace.layer_out[9]] == (1, 256, 2, 2)  # SPPF, at stride 32 of 64 px
    assert trace.state_shapes["model.0.conv.weight"] == (16, 3, 3, 3)
