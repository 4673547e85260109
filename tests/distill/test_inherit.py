"""Weight selection: indices, layout checks and the selected values on stock Ultralytics pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from ultralytics_kd.distill.channels import channel_plan
from ultralytics_kd.distill.inherit import Graft, inherit_problem, layout, select_graft, select_weights, uniform_index
from ultralytics_kd.distill.tracing import ChannelTrace


def test_uniform_index_is_evenly_spaced_and_keeps_chunks_paired():
    assert uniform_index(4, 8).tolist() == [0, 2, 4, 6]
    assert uniform_index(3, 3).tolist() == [0, 1, 2]
    assert uniform_index(2, 5).tolist() == [0, 2]
    # two concatenated halves of one ratio: the student's halves come from the teacher's halves (parts of different
    # ratios need a map each: test_channels.py)
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
    """Every tensor is filled (which teacher channels each takes: the exactness tests below); the stem, whose input is
    the image, takes every other of the teacher's 32 kernels, all their input channels."""
    t = DetectionModel(teacher, nc=3, verbose=False)
    s = DetectionModel(student, nc=3, verbose=False)
    assert inherit_problem(s, t) is None
    before = {k: v.clone() for k, v in s.state_dict().items()}
    assert select_weights(s, t) == len(before)
    assert torch.equal(s.model[0].conv.weight, t.model[0].conv.weight[::2])
    assert torch.equal(s.model[0].bn.running_var, t.model[0].bn.running_var[::2])
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
    and leaves the backbone as built."""
    import ultralytics_kd  # noqa: F401  (registers the ShuffleV2 block)

    t = DetectionModel("yolov9s.yaml", nc=3, verbose=False)
    s = DetectionModel(ELAN, nc=3, verbose=False)
    graft, why = Graft.of(s, layout(t), t.state_dict())
    assert why is None and graft == Graft(start=8, offset=2, entries=((5, 4), (6, 6), (7, 9)))
    before = {k: v.clone() for k, v in s.state_dict().items()}
    n = select_graft(s, t, graft)
    grafted = [k for k in before if int(k.split(".")[1]) >= 8]
    assert n == len(grafted) > 0
    for k, v in s.state_dict().items():  # the backbone as built; which channels the rest takes: the exactness test
        if int(k.split(".")[1]) < 8:
            assert torch.equal(v, before[k]), k
        elif v.dim() == 4 and "dfl" not in k:
            assert not torch.equal(v, before[k]), k
    assert torch.equal(s.model[20].cv3[0][2].bias, t.model[22].cv3[0][2].bias)  # the class outputs, all of them
    ts = t.state_dict()  # other pairs say why not
    assert Graft.of(DetectionModel(SHUFFLE, nc=3, verbose=False), layout(t), ts)[1] == (
        "no layer before the Detect head has the teacher's layout"
    )
    assert Graft.of(DetectionModel("yolov9t.yaml", nc=3, verbose=False), layout(t), ts)[1] == (
        "the whole student has the teacher's layout"
    )


# exactness: the selected student is the teacher with the channels it drops zeroed ------------------------------------
def _randomise(model: nn.Module) -> nn.Module:
    """Random BN affine parameters and statistics (convolutions keep their random init), in eval mode, so that
    equal outputs cannot come from a network that maps everything to the same values."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    return model.eval()


def _zero_dropped(student: nn.Module, teacher: nn.Module, rename=lambda k: k, keys=None) -> dict[str, torch.Tensor]:
    """In every teacher convolution, zero the input channels that no student input channel was selected from.

    Which teacher input channel a student input channel came from is found by value (independently of the maps the
    code computed): its weights at kernel position (0, 0) are looked up among the teacher's, all distinct random
    floats, and the teacher channel holding most of them wins. With those columns zeroed, a channel the student does
    not keep reaches no output of the teacher. Returns, for each student weight, the teacher input channel of each of
    its input channels.
    """
    t, found = teacher.state_dict(), {}
    transposed = {f"{n}.weight" for n, m in student.named_modules() if isinstance(m, nn.ConvTranspose2d)}
    for k, v in student.state_dict().items():
        if v.dim() != 4 or (keys is not None and k not in keys):
            continue
        w = t[rename(k)]
        if k in transposed:  # its input channels first
            v, w = v.transpose(0, 1), w.transpose(0, 1)
        if v.shape[1] == 1:
            continue  # depthwise kernels read one channel each: whatever they keep, their output map is their input's
        values, order = w[:, :, 0, 0].flatten().sort()
        at = torch.searchsorted(values, v[:, :, 0, 0].flatten().contiguous()).clamp_max(len(values) - 1)
        cols = (order[at] % w.shape[1]).view(v.shape[0], v.shape[1]).mode(0).values
        keep = torch.zeros(w.shape[1], dtype=torch.bool)
        keep[cols] = True
        w[:, ~keep] = 0.0  # a view of the teacher's parameter
        found[k] = cols
    return found


def _assert_same_outputs(ys, yt, feats: list[torch.Tensor]):
    """The Detect inputs (the teacher's at the channels ``feats`` that the student's Detect reads them as) and raw
    outputs (in eval mode, the dict beside the decoded boxes) equal to float tolerance, relative to how far each varies
    from its mean (the head's biases alone would let a loose tolerance pass)."""
    pairs = [(f"feats {i}", a, b[:, c]) for i, (a, b, c) in enumerate(zip(ys[1]["feats"], yt[1]["feats"], feats))]
    for k, a, b in pairs + [(k, ys[1][k], yt[1][k]) for k in ("boxes", "scores")]:
        spread = float((b - b.mean()).abs().max())
        assert spread > 1e-3, k  # not a flat output
        diff = float((a - b).abs().max())
        assert diff <= 1e-5 * spread, f"{k}: max abs diff {diff:.3g} (spread {spread:.3g})"


def _detect_reads(found: dict[str, torch.Tensor], model: nn.Module) -> list[torch.Tensor]:
    """The teacher channels that the student's Detect reads as each of its inputs (its first box convolution's)."""
    d = len(model.model) - 1
    return [found[f"model.{d}.cv2.{i}.0.conv.weight"] for i in range(model.model[-1].nl)]


@pytest.mark.parametrize(
    "student, teacher",
    [
        ("yolov8n.yaml", "yolov8s.yaml"),
        ("yolov8n.yaml", "yolov8m.yaml"),
        ("yolov8n.yaml", "yolov8l.yaml"),
        ("yolov8n.yaml", "yolov8x.yaml"),
        ("yolo11n.yaml", "yolo11s.yaml"),
        ("yolov9t.yaml", "yolov9s.yaml"),
        ("yolov6n.yaml", "yolov6s.yaml"),  # transposed convolutions
    ],
)
def test_selected_student_computes_the_teacher_with_dropped_channels_zeroed(student, teacher):
    """Every Concat part, C2f split, attention head and residual add keeps its channels paired: the student equals the
    teacher whose dropped channels are zeroed (YOLOv8-n from -m/-l/-x has Concats of parts with different ratios)."""
    torch.manual_seed(0)
    t = _randomise(DetectionModel(teacher, nc=3, verbose=False))
    s = DetectionModel(student, nc=3, verbose=False).eval()
    select_weights(s, t)
    found = _zero_dropped(s, t)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_same_outputs(s(x), t(x), _detect_reads(found, s))


@pytest.mark.parametrize("student, teacher", [("yolo11n.yaml", "yolo11m.yaml"), ("yolov9t.yaml", "yolov9m.yaml")])
def test_pairs_of_different_blocks_are_refused(student, teacher):
    """YOLO11-m's C3k2 blocks hold C3k where YOLO11-n's hold bottlenecks, YOLOv9-m has other ELAN blocks than -t:
    nothing to select exactly, and the plan says where too."""
    s, t = DetectionModel(student, nc=3, verbose=False), DetectionModel(teacher, nc=3, verbose=False)
    assert inherit_problem(s, t) is not None
    assert channel_plan(s, t)[1] is not None
    with pytest.raises(ValueError, match="cannot initialise this student"):
        select_weights(s, t)


@pytest.mark.parametrize("p3", [64, 48])
def test_grafted_layers_compute_the_teachers_from_its_backbone_outputs(p3, tmp_path):
    """The ShuffleV2 student's neck and head, grafted from YOLOv9-s and fed the teacher's backbone outputs (each as
    evenly spaced channels, the ones ``EntryMimic`` trains the student's backbone to give), equal the teacher's with its
    dropped channels zeroed; also with the P3 entry at 48 channels, where the neck's P3 Concat (layer 12) has parts of
    ratios 96/192 and 48/128."""
    import ultralytics_kd  # noqa: F401  (registers the ShuffleV2 block)

    torch.manual_seed(0)
    yaml = tmp_path / "student.yaml"
    yaml.write_text(Path(ELAN).read_text().replace("[2, 1, Conv, [64, 1, 1]]", f"[2, 1, Conv, [{p3}, 1, 1]]"))
    t = _randomise(DetectionModel("yolov9s.yaml", nc=3, verbose=False))
    s = DetectionModel(str(yaml), nc=3, verbose=False).eval()
    graft, why = Graft.of(s, layout(t), t.state_dict(), ChannelTrace.of(t))  # as choose_start plans it
    assert why is None and graft.entries == ((5, 4), (6, 6), (7, 9)) and graft.plan
    select_graft(s, t.state_dict(), graft)
    grafted = [k for k in s.state_dict() if int(k.split(".")[1]) >= graft.start]
    rename = lambda k: ".".join(["model", str(int(k.split(".")[1]) + graft.offset), *k.split(".")[2:]])  # noqa: E731
    found = _zero_dropped(s, t, rename, set(grafted))
    entries = {}
    hooks = [t.model[b].register_forward_hook(lambda m, a, y, b=b: entries.__setitem__(b, y)) for _, b in graft.entries]
    for a, b in graft.entries:  # the student's backbone outputs replaced by the teacher's, evenly spaced channels
        hooks.append(
            s.model[a].register_forward_hook(lambda m, i, y, b=b: entries[b][:, _even(y.shape[1], entries[b])])
        )
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        yt = t(x)
        ys = s(x)
    for h in hooks:
        h.remove()
    _assert_same_outputs(ys, yt, _detect_reads(found, s))


def _even(n: int, t: torch.Tensor) -> torch.Tensor:
    """``n`` evenly spaced channels of ``t`` from the first (EntryMimic's pairing: ``t[:, ::2]`` for half as many)."""
    c = t.shape[1]
    return torch.tensor([i * c // n for i in range(n)])
