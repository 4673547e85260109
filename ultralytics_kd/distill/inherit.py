"""Weight selection: start a narrower student from a uniform selection of the teacher's trained weights.

Xu et al., "Initializing Models with Larger Ones" (ICLR 2024): when the student has the teacher's layer layout with
fewer channels (YOLOv9-t and YOLOv9-s, YOLO11n and YOLO11s), every student tensor is filled with evenly spaced
elements of the teacher's tensor of the same name. Selecting consistently keeps a channel that one layer writes paired
with the weights that the next layer reads it with. One evenly spaced index over a whole dimension does that only where
the dimension has one student-to-teacher ratio; a layer that reads a Concat of parts with different ratios (YOLOv8-n's
neck against YOLOv8-m's) or a C2f with fewer bottlenecks needs one map per part, so an Ultralytics student takes the
maps of ``channels.channel_plan``, which follows every Concat, split and attention head, or is refused with the reason.
With those maps the selected student computes what the teacher would if every channel it drops were zero; the result
is a starting point, not a copy of the teacher's function, and training then adapts every tensor as usual.

Cross-family pairs (different layers, e.g. a ShuffleV2 student) have nothing to select from as a whole;
``inherit_problem`` says why so the trainer can skip or refuse. A student whose last layers (neck and head) have the
teacher's layout under a backbone of another family can still take those layers: ``Graft.of`` aligns the two models
from the Detect end, finds where the shared layout starts and which backbone outputs (``entries``) feed it, and
``select_graft`` fills that part through the same channel maps, reading each entry as evenly spaced teacher channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ultralytics_kd.distill.channels import channel_plan, uniform_index
from ultralytics_kd.distill.tracing import ChannelTrace

__all__ = ["Graft", "inherit_problem", "layout", "select_graft", "select_problem", "select_weights", "uniform_index"]


def inherit_problem(student: nn.Module, teacher: nn.Module | dict[str, torch.Tensor]) -> str | None:
    """Why the teacher's weights cannot initialise the student, or None if they can.

    Args:
        student (nn.Module): The student model.
        teacher (nn.Module | dict[str, torch.Tensor]): The unfused teacher, or its state dict.

    Returns:
        (str | None): A one-line reason (missing tensors, a different rank, or a student dimension larger than the
            teacher's), or None.
    """
    s, t = student.state_dict(), _state(teacher)
    if missing := [k for k in s if k not in t]:
        return f"{len(missing)} of {len(s)} student tensors have no teacher tensor of the same name (e.g. {missing[0]})"
    for k, v in s.items():
        if v.dim() != t[k].dim() or any(a > b for a, b in zip(v.shape, t[k].shape)):
            return f"'{k}' is {tuple(v.shape)} in the student but {tuple(t[k].shape)} in the teacher"
    return None


def _state(model: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return model if isinstance(model, dict) else model.state_dict()


def select_problem(student: nn.Module, teacher: nn.Module | ChannelTrace) -> str | None:
    """Why weight selection cannot pair the student's channels exactly with the teacher's, or None (``channel_plan``).

    Args:
        student (nn.Module): The student, an Ultralytics model with the teacher's layout (``inherit_problem`` is None).
        teacher (nn.Module | ChannelTrace): The unfused teacher, or its trace.

    Returns:
        (str | None): A one-line reason, or None.
    """
    why = channel_plan(student, teacher)[1]
    return f"its channels cannot be paired exactly with the teacher's ({why})" if why else None


def _traceable(model: nn.Module) -> bool:
    """An Ultralytics model (its layers in ``model.model``), whose forward pass ``channel_plan`` can follow."""
    return isinstance(getattr(model, "model", None), (nn.Sequential, nn.ModuleList))


@torch.no_grad()
def select_weights(
    student: nn.Module, teacher: nn.Module | dict[str, torch.Tensor], trace: ChannelTrace | None = None
) -> int:
    """Fill every student tensor (weights, biases, BN statistics) with a selection of the teacher's.

    An Ultralytics student takes the maps of ``channels.channel_plan`` (one per tensor boundary); any other module
    (a plain chain of layers, such as one branch of a Detect head) takes evenly spaced indices on every dimension,
    which pairs channels exactly only where no tensor is concatenated or split.

    Args:
        student (nn.Module): Narrower model with the teacher's layer names; modified in place.
        teacher (nn.Module | dict[str, torch.Tensor]): The trained, unfused teacher (or its state dict); not modified.
        trace (ChannelTrace, optional): ``ChannelTrace.of(teacher)``, needed with a state dict for an Ultralytics
            student.

    Returns:
        (int): Number of tensors filled.

    Raises:
        ValueError: If the two models do not share a layout (see ``inherit_problem``), or their channels cannot be
            paired exactly (see ``select_problem``).

    Examples:
        >>> from torch import nn
        >>> s, t = nn.Linear(2, 2), nn.Linear(4, 4)
        >>> select_weights(s, t)
        2
        >>> torch.equal(s.weight, t.weight[::2, ::2])
        True
    """
    if why := inherit_problem(student, teacher):
        raise ValueError(f"the teacher's weights cannot initialise this student: {why}")
    t = _state(teacher)
    if not _traceable(student):
        for k, v in student.state_dict().items():
            _select_into(v, t[k], [None] * v.dim())
        return len(student.state_dict())
    return _fill(student, t, _plan(student, teacher, trace, None))


def _plan(student: nn.Module, teacher: nn.Module | dict, trace: ChannelTrace | None, graft: Graft | None) -> dict:
    """``channel_plan`` for the pair (of the grafted layers only with ``graft``), or a ValueError with its reason."""
    if trace is None and isinstance(teacher, dict):
        raise ValueError("pairing an Ultralytics student's channels needs the teacher model or its ChannelTrace")
    plan, why = channel_plan(student, teacher if trace is None else trace, graft)
    if why:
        raise ValueError(
            f"the teacher's weights cannot initialise this student exactly: its channels cannot be paired with the "
            f"teacher's ({why}). Start it otherwise (kd_init=auto falls back to a mimic stage, or kd_init=none)"
        )
    return plan


def _fill(student: nn.Module, t: dict[str, torch.Tensor], plan: dict) -> int:
    """Copy into each student tensor of ``plan`` its teacher tensor at the planned indices; return how many."""
    state = student.state_dict()
    for k, (tk, dims) in plan.items():
        _select_into(state[k], t[tk], dims)
    return len(plan)


def _select_into(v: torch.Tensor, w: torch.Tensor, dims: list) -> None:
    """Copy into ``v`` the elements of the larger ``w`` at ``dims`` (indices per dimension; None: evenly spaced)."""
    for d, (n, idx) in enumerate(zip(v.shape, dims)):
        if idx is None and n != w.shape[d]:
            idx = uniform_index(n, w.shape[d])
        if idx is not None:
            w = w.index_select(d, idx.to(w.device))
    v.copy_(w)  # state_dict tensors share storage with the parameters; copy_ also casts fp16 teachers


def layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Each layer of an Ultralytics model as (class name, absolute indices of the layers it reads)."""
    out = []
    for j, m in enumerate(model.model):
        f = m.f if isinstance(m.f, (list, tuple)) else [m.f]
        out.append((type(m).__name__, tuple(x if x >= 0 else j + x for x in f)))
    return out


def _layer_state(state: dict[str, torch.Tensor], j: int) -> dict[str, torch.Tensor]:
    prefix = f"model.{j}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _layer_fits(s: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> bool:
    """Every tensor of a student layer has a teacher tensor of the same name and rank, no smaller, and conv kernels of
    the same size (a 1x1 kernel is not a selection of a 3x3 one)."""
    return all(
        k in t
        and v.dim() == t[k].dim()
        and all(a <= b for a, b in zip(v.shape, t[k].shape))
        and (v.dim() != 4 or v.shape[2:] == t[k].shape[2:])
        for k, v in s.items()
    )


@dataclass(frozen=True)
class Graft:
    """The student's layers from ``start`` on have the teacher's layout, ``offset`` layers earlier than the teacher's.

    Attributes:
        start (int): First student layer of the shared part (the neck); the backbone is everything before it.
        offset (int): Teacher layer index minus student layer index within the shared part.
        entries (tuple[tuple[int, int], ...]): (student layer, teacher layer) pairs of the backbone outputs that the
            shared part reads: what the student's backbone must reproduce for the selected layers to work.
        plan (dict | None): The grafted layers' channel maps (``channels.channel_plan``), where ``of`` had the
            teacher's trace.
    """

    start: int
    offset: int
    entries: tuple[tuple[int, int], ...]
    plan: dict | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        student: nn.Module,
        teacher_layout: Sequence[tuple[str, tuple[int, ...]]],
        teacher_state: dict,
        teacher_trace: ChannelTrace | None = None,
    ) -> tuple[Graft | None, str | None]:
        """Align ``student`` with the teacher from the Detect end; return the graft, or None and the reason.

        Args:
            student (nn.Module): The student as built (an Ultralytics model).
            teacher_layout (Sequence[tuple[str, tuple[int, ...]]]): ``layout(teacher)``.
            teacher_state (dict[str, torch.Tensor]): The teacher's unfused state dict.
            teacher_trace (ChannelTrace, optional): ``ChannelTrace.of(teacher)``: with it, the graft also needs the
                grafted layers' channels to pair exactly with the teacher's, and carries their maps.

        Returns:
            (tuple[Graft | None, str | None]): The graft and None, or None and a one-line reason. A graft takes the
                whole head section of the student's YAML (neck and Detect) at least, so what imitates the teacher is
                its backbone.
        """
        s_layout, s_state = layout(student), student.state_dict()
        offset = len(teacher_layout) - len(s_layout)
        if offset < 0:
            return None, f"the student has more layers ({len(s_layout)}) than the teacher ({len(teacher_layout)})"
        start = len(s_layout)
        for j in reversed(range(len(s_layout))):
            k = j + offset
            same = s_layout[j][0] == teacher_layout[k][0] and len(s_layout[j][1]) == len(teacher_layout[k][1])
            if not same or not _layer_fits(_layer_state(s_state, j), _layer_state(teacher_state, k)):
                break
            start = j
        if start > len(s_layout) - 2:
            return None, "no layer before the Detect head has the teacher's layout"
        if start == 0:
            return None, "the whole student has the teacher's layout"
        head = len(getattr(student, "yaml", {}).get("backbone", ())) or start  # first layer of the YAML's head section
        if start > head:
            return (
                None,
                f"only its layers {start}-{len(s_layout) - 1} have the teacher's layout, not all from {head} on",
            )
        entries = {}
        for j in range(start, len(s_layout)):
            for a, b in zip(s_layout[j][1], teacher_layout[j + offset][1]):
                if a >= start and a + offset != b:
                    return None, f"student layer {j} reads layer {a}, but the teacher's layer {j + offset} reads {b}"
                if a < start and entries.setdefault(a, b) != b:
                    return None, f"student layer {a} feeds teacher layers {entries[a]} and {b} in the two layouts"
        graft = cls(start, offset, tuple(sorted(entries.items())))
        if teacher_trace is None:
            return graft, None
        plan, why = channel_plan(student, teacher_trace, graft)
        if why:
            return None, f"the channels of its layers {start}-{len(s_layout) - 1} cannot be paired exactly ({why})"
        return cls(graft.start, graft.offset, graft.entries, plan), None

    def describe(self, n_layers: int) -> str:
        """E.g. "layers 8-20 (the teacher's 10-22), fed by backbone layers 5, 6, 7 (the teacher's 4, 6, 9)"."""
        last = n_layers - 1
        s, t = zip(*self.entries)
        return (
            f"layers {self.start}-{last} (the teacher's {self.start + self.offset}-{last + self.offset}), fed by "
            f"backbone layers {', '.join(map(str, s))} (the teacher's {', '.join(map(str, t))})"
        )


@torch.no_grad()
def select_graft(student: nn.Module, teacher: nn.Module | dict[str, torch.Tensor], graft: Graft) -> int:
    """Fill the student's layers from ``graft.start`` on with a selection of the teacher's matching layers.

    Each backbone output in ``graft.entries`` is read as evenly spaced channels of the teacher's (what ``EntryMimic``
    trains it to be); from there the maps follow the grafted layers (``channels.channel_plan``).

    Args:
        student (nn.Module): The student; its backbone (layers before ``graft.start``) is left as it is.
        teacher (nn.Module | dict[str, torch.Tensor]): The unfused teacher, or its state dict (then ``graft`` must
            carry its plan: ``Graft.of`` with the teacher's trace); not modified.
        graft (Graft): From ``Graft.of`` for this pair.

    Returns:
        (int): Number of tensors filled.

    Raises:
        ValueError: If the grafted layers' channels cannot be paired exactly with the teacher's.
    """
    plan = graft.plan if graft.plan is not None else _plan(student, teacher, None, graft)
    return _fill(student, _state(teacher), plan)
