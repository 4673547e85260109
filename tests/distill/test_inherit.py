"""Weight selection: indices, layout checks and the selected values on stock Ultralytics pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from ultralytics_kd.distill.inherit import Graft, inherit_problem, layout, select_graft, select_weights, uniform_index


def test_uniform_index_is_evenly_spaced_and_keeps_chunks_paired():
    assert uniform_index(4, 8).tolist() == [0, 2, 4, 6]
    assert uniform_index(3, 3).tolist() == [0, 1, 2]
    assert uniform_index(2, 5).tolist() == [0, 2]
    # a teacher tensor made of two concatenated halves: the student's halves come from the teacher's halves
    idx = uniform_index(32, 64)
    assert (idx[:16] < 32).all() and (idx[16:] >= 32).all()


def test_select_weights_on_a_conv_bn_pair():
    t = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1))
    s = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))
    for p in t.parameters():
        nn.init.normal_(p)
    t[1].running_mean.normal_()
    assert select_weights(s, t) == len(s.state_dict())
    assert torch.equal(s[0].weight, t[0].weight[::2])  # same in-channels (3): all kept
    assert torch.equal(s[1].running_mean, t[1].running_mean[::2])
    assert torch.equal(s[2].weight, t[2].weight[::2, ::2])
    assert torch.equal(s[2].bias, t[2].bias[::2])


@pytest.mark.parametrize("student, teacher", [("yolov8n.yaml", "yolov8s.yaml"), ("yolov9t.yaml", "yolov9s.yaml")])
def test_stock_width_pairs_inherit_every_tensor(student, teacher):
    t = DetectionModel(teacher, nc=3, verbose=False)
    s = DetectionModel(student, nc=3, verbose=False)
    assert inherit_problem(s, t) is None
    before = {k: v.clone() for k, v in s.state_dict().items()}
    select_weights(s, t)
    ts = t.state_dict()
    for k, v in s.state_dict().items():
        expected = ts[k]
        for d, n in enumerate(v.shape):
            expected = expected.index_select(d, uniform_index(n, expected.shape[d]))
        assert torch.equal(v, expected), k
    kernels = [k for k, v in s.state_dict().items() if v.dim() == 4 and "dfl" not in k]  # DFL's is fixed: 0..15
    assert kernels and all(not torch.equal(s.state_dict()[k], before[k]) for k in kernels)
    s.eval()
    with torch.no_grad():
        assert torch.isfinite(s(torch.rand(1, 3, 64, 64))[0]).all()


def test_other_layouts_are_refused_with_the_reason():
    t = DetectionModel("yolov8s.yaml", nc=3, verbose=False)
    assert "no teacher tensor" in inherit_problem(DetectionModel("yolov9t.yaml", nc=3, verbose=False), t)
    wide = DetectionModel("yolov8m.yaml", nc=3, verbose=False)  # same names, deeper and wider than the teacher
    extra = [k for k in wide.state_dict() if k not in t.state_dict()]
    assert extra and all(".m." in k for k in extra)  # its extra bottleneck repeats
    n = len(wide.state_dict())
    assert inherit_problem(wide, t) == (
        f"{len(extra)} of {n} student tensors have no teacher tensor of the same name (e.g. {extra[0]})"
    )
    with pytest.raises(ValueError, match="cannot initialise this student"):
        select_weights(DetectionModel("yolov9t.yaml", nc=3, verbose=False), t)


ELAN = str(Path(__file__).parents[2] / "ultralytics_kd" / "cfg" / "models" / "yolov9-tiny-shufflev2.yaml")
SHUFFLE = str(Path(__file__).parents[2] / "ultralytics_kd" / "cfg" / "models" / "yolov9-tiny-shufflev2-c2f.yaml")


def test_graft_aligns_neck_and_head_from_the_detect_end():
    """The ShuffleV2 student with YOLOv9-t's neck and head, under YOLOv9-s: its layers 8-20 are the teacher's 10-22,
    fed by its backbone layers 5, 6, 7 where the teacher's neck reads 4, 6, 9. select_graft fills exactly those layers
    by uniform selection and leaves the backbone as built."""
    import ultralytics_kd  # noqa: F401  (registers the ShuffleV2 block)

    t = DetectionModel("yolov9s.yaml", nc=3, verbose=False)
    s = DetectionModel(ELAN, nc=3, verbose=False)
    graft, why = Graft.of(s, layout(t), t.state_dict())
    assert why is None and graft == Graft(start=8, offset=2, entries=((5, 4), (6, 6), (7, 9)))
    before = {k: v.clone() for k, v in s.state_dict().items()}
    n = select_graft(s, t, graft)
    ts = t.state_dict()
    grafted = [k for k in before if int(k.split(".")[1]) >= 8]
    assert n == len(grafted) > 0
    for k, v in s.state_dict().items():
        j = int(k.split(".")[1])
        if j < 8:
            assert torch.equal(v, before[k]), k
            continue
        expected = ts[".".join(["model", str(j + 2), *k.split(".")[2:]])]
        for d, size in enumerate(v.shape):
            expected = expected.index_select(d, uniform_index(size, expected.shape[d]))
        assert torch.equal(v, expected), k
    # other pairs say why not
    assert Graft.of(DetectionModel(SHUFFLE, nc=3, verbose=False), layout(t), ts)[1] == (
        "no layer before the Detect head has the teacher's layout"
    )
    assert Graft.of(DetectionModel("yolov9t.yaml", nc=3, verbose=False), layout(t), ts)[1] == (
        "the whole student has the teacher's layout"
    )
