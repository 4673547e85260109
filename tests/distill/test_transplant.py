"""Head transplant: inside the maps, the student's composed first convs equal the teacher's head on adapted maps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

import ultralytics_kd  # noqa: F401  (registers the ShuffleV2 block)
from ultralytics_kd.distill.connectors import build_connectors
from ultralytics_kd.distill.inherit import uniform_index
from ultralytics_kd.distill.transplant import transplant_head, transplant_problem

SHUFFLE = str(Path(__file__).parents[2] / "ultralytics_kd" / "cfg" / "models" / "yolov9-tiny-shufflev2-c2f.yaml")


def _heads(student="yolov8n.yaml", teacher="yolov8s.yaml", nc=2):
    s = DetectionModel(student, nc=nc, verbose=False).eval()
    t = DetectionModel(teacher, nc=nc, verbose=False).eval()
    for m in t.modules():  # trained-looking BN statistics, so the shift into running_mean is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return s, t


def _channels(model, size=64):
    feats = {}
    layers = model.model[-1].f
    hooks = [model.model[i].register_forward_hook(lambda m, x, y, i=i: feats.__setitem__(i, y)) for i in layers]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return [feats[i].shape[1] for i in layers]


@pytest.mark.parametrize("student", [SHUFFLE, "yolov8n.yaml"])
def test_first_convs_equal_teacher_head_on_adapted_maps(student):
    torch.manual_seed(0)
    s, t = _heads(student)
    adapters = build_connectors(_channels(s), _channels(t)).eval()
    for a in adapters:
        bn = a[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    mean = [torch.randn(a[1].num_features) for a in adapters]
    std = [torch.rand(a[1].num_features) + 0.5 for a in adapters]
    sh, th = s.model[-1], t.model[-1]
    before = sh.cv2[0][0].conv.weight.clone()
    transplant_head(sh, th, adapters, mean, std)
    for i, a in enumerate(adapters):
        x = torch.randn(2, a[0].in_channels, 9, 9)
        with torch.no_grad():
            teacher_in = std[i][:, None, None] * a(x) + mean[i][:, None, None]
            for br in ("cv2", "cv3"):
                yt, ys = getattr(th, br)[i][0](teacher_in), getattr(sh, br)[i][0](x)
                yt = yt[:, uniform_index(ys.shape[1], yt.shape[1])]
                # the teacher's conv sees zero padding where the composed one sees the adapter's constant: border only
                torch.testing.assert_close(ys[..., 1:-1, 1:-1], yt[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
                assert not torch.allclose(ys, yt, atol=1e-3)  # and the border does differ: the check can tell
    assert not torch.equal(before, sh.cv2[0][0].conv.weight)
    w, tw = sh.cv3[0][2].weight, th.cv3[0][2].weight  # later tensors are the teacher's uniform selection
    rows, cols = uniform_index(w.shape[0], tw.shape[0]), uniform_index(w.shape[1], tw.shape[1])
    torch.testing.assert_close(w, tw[rows][:, cols])


@pytest.mark.parametrize(
    "student, teacher, nc, match",
    [
        ("yolo11n.yaml", "yolo11s.yaml", 2, "plain Conv"),  # depthwise first layer in the class branch
        ("yolo26n.yaml", "yolov8s.yaml", 2, "differ|end-to-end"),
        ("yolov8n.yaml", "yolov8s.yaml", (2, 3), "nc differs"),
    ],
)
def test_transplant_problem_names_the_reason(student, teacher, nc, match):
    ns, nt = nc if isinstance(nc, tuple) else (nc, nc)
    s = DetectionModel(student, nc=ns, verbose=False)
    t = DetectionModel(teacher, nc=nt, verbose=False)
    why = transplant_problem(s.model[-1], t.model[-1])
    assert why is not None and re.search(match, why), why
    with pytest.raises(ValueError, match="cannot be transplanted"):
        transplant_head(s.model[-1], t.model[-1], build_connectors([1, 1, 1], [1, 1, 1]))


def test_transplant_problem_none_for_a_shufflev2_student():
    s, t = _heads(SHUFFLE)
    assert transplant_problem(s.model[-1], t.model[-1]) is None
