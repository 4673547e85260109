"""Head transplant: give a student of another family the teacher's trained Detect head, read through the adapters.

Weight selection (``inherit.py``) needs the teacher's layer layout. A student of another family (e.g. a ShuffleV2
backbone under a YOLOv9-s teacher) has nothing to select from in its backbone and neck, but its Detect head has the
teacher's head layout: per level, ``cv2`` (box) and ``cv3`` (class) branches of Conv-Conv-Conv2d. So ``kd_init=mimic``
first trains the student's Detect inputs to imitate the teacher's through 1x1 adapters (``FeatureMimic``), then writes
into the student's head the teacher's head composed with those adapters:

- the first Conv of each branch reads the teacher's maps, which the adapter predicts as
  ``std * BN(A x) + mean = g * A x + b`` per teacher channel. Its weight becomes ``W_t diag(g) A`` (a student-width
  kernel: a 1x1 map followed by a linear conv is one conv), and the constant ``W_t b`` moves into its BatchNorm's
  running mean. Output channels the student lacks are dropped by the same uniform selection as ``inherit.py``;
- every later tensor of the head is selected from the teacher's as in ``inherit.py``.

Inside the maps the composed conv equals teacher head on adapted features exactly; on the one-pixel border, where the
teacher's conv sees zero padding instead of the constant ``b``, it does not. Like weight selection, the result is a
starting point that training then adapts, not a copy of the teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from ultralytics_kd.distill.inherit import inherit_problem, select_weights, uniform_index

__all__ = ["transplant_head", "transplant_problem"]

_BRANCHES = ("cv2", "cv3")


def _first_conv(branch: nn.Module) -> nn.Module | None:
    """The branch's first layer if it is a plain (not grouped) Conv with BatchNorm, else None."""
    first = branch[0] if isinstance(branch, nn.Sequential) and len(branch) else None
    conv = getattr(first, "conv", None)
    plain = isinstance(conv, nn.Conv2d) and conv.groups == 1
    return first if plain and isinstance(getattr(first, "bn", None), nn.BatchNorm2d) else None


def transplant_problem(student_head: nn.Module, teacher_head: nn.Module) -> str | None:
    """Why the teacher's Detect head cannot be transplanted onto the student's, or None if it can.

    Args:
        student_head (nn.Module): The student's Detect module.
        teacher_head (nn.Module): The teacher's unfused Detect module.

    Returns:
        (str | None): A one-line reason, or None.
    """
    if type(student_head) is not type(teacher_head):
        return f"the heads differ ({type(student_head).__name__} and {type(teacher_head).__name__})"
    if getattr(student_head, "one2one_cv2", None) is not None:
        return "an end-to-end (one-to-one) head is not covered"
    for attr in ("nc", "reg_max"):
        if getattr(student_head, attr, None) != getattr(teacher_head, attr, None):
            return f"{attr} differs ({getattr(student_head, attr, None)} and {getattr(teacher_head, attr, None)})"
    for br in _BRANCHES:
        s, t = getattr(student_head, br, None), getattr(teacher_head, br, None)
        if s is None or t is None or len(s) != len(t):
            return f"the heads' '{br}' branches differ"
        for i, (sb, tb) in enumerate(zip(s, t)):
            s0, t0 = _first_conv(sb), _first_conv(tb)
            if s0 is None or t0 is None:
                return f"'{br}.{i}' does not start with a plain Conv (e.g. a depthwise one, as in YOLO11 heads)"
            if s0.conv.kernel_size != t0.conv.kernel_size:
                return f"'{br}.{i}.0' kernels differ"
            if s0.conv.out_channels > t0.conv.out_channels:
                return f"'{br}.{i}.0' is wider in the student than in the teacher"
            if why := inherit_problem(nn.Sequential(*list(sb)[1:]), nn.Sequential(*list(tb)[1:])):
                return f"'{br}.{i}' after its first Conv: {why}"
    return None


@torch.no_grad()
def transplant_head(
    student_head: nn.Module,
    teacher_head: nn.Module,
    adapters: nn.ModuleList,
    mean: list[torch.Tensor] | None = None,
    std: list[torch.Tensor] | None = None,
) -> None:
    """Write the teacher's head, composed with the adapters, into the student's head (in place).

    Args:
        student_head (nn.Module): The student's Detect module; modified in place.
        teacher_head (nn.Module): The teacher's unfused Detect module; not modified.
        adapters (nn.ModuleList): One ``ChannelAdapter`` (1x1 conv + BN, student -> teacher channels) per level,
            trained so that ``std * adapter(student map) + mean`` predicts the teacher's map. Read in eval mode.
        mean (list[torch.Tensor], optional): Per-level teacher channel means; zeros when None.
        std (list[torch.Tensor], optional): Per-level teacher channel stds; ones when None.

    Raises:
        ValueError: If ``transplant_problem`` finds a reason.
    """
    if why := transplant_problem(student_head, teacher_head):
        raise ValueError(f"the teacher's head cannot be transplanted onto this student: {why}")
    for i, adapter in enumerate(adapters):
        conv, bn = adapter[0], adapter[1]
        a = conv.weight[:, :, 0, 0].float()  # (c_teacher, c_student)
        g = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
        b = bn.bias.float() - g * bn.running_mean.float()
        if std is not None:
            g, b = g * std[i].float(), b * std[i].float()
        if mean is not None:
            b = b + mean[i].float()
        for br in _BRANCHES:
            sb, tb = getattr(student_head, br)[i], getattr(teacher_head, br)[i]
            s0, t0 = _first_conv(sb), _first_conv(tb)
            sel = uniform_index(s0.conv.out_channels, t0.conv.out_channels).to(t0.conv.weight.device)
            w = t0.conv.weight.float()[sel]  # (o, c_teacher, k, k)
            s0.conv.weight.copy_(torch.einsum("ockl,c,cj->ojkl", w, g.to(w), a.to(w)))
            shift = torch.einsum("ockl,c->o", w, b.to(w))  # what the adapter's constant adds to every output
            for name in ("weight", "bias", "running_var"):
                getattr(s0.bn, name).copy_(getattr(t0.bn, name)[sel])
            s0.bn.running_mean.copy_(t0.bn.running_mean[sel] - shift.to(t0.bn.running_mean))
            for j in range(1, len(sb)):
                select_weights(sb[j], tb[j])
    if hasattr(student_head, "dfl") and hasattr(teacher_head, "dfl"):
        select_weights(student_head.dfl, teacher_head.dfl)
