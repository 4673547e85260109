"""Weight selection: start a narrower student from a uniform selection of the teacher's trained weights.

Xu et al., "Initializing Models with Larger Ones" (ICLR 2024): when the student has the teacher's layer layout with
fewer channels (YOLOv9-t and YOLOv9-s, YOLO11n and YOLO11s), every student tensor is filled with evenly spaced
elements of the teacher's tensor of the same name, the same indices on every dimension of every layer. Selecting
consistently keeps a channel that one layer writes paired with the weights that the next layer reads it with, and
evenly spaced (rather than first-k) indices keep that true across concatenations and ``chunk`` splits, whose halves
shrink together. The result is a starting point, not a copy of the teacher's function (each output now sums over
fewer inputs); training then adapts every tensor as usual.

Cross-family pairs (different layers, e.g. a ShuffleV2 student) have nothing to select from; ``inherit_problem`` says
why so the trainer can skip or refuse.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["inherit_problem", "select_weights", "uniform_index"]


def uniform_index(n_student: int, n_teacher: int) -> torch.Tensor:
    """``n_student`` evenly spaced indices into ``range(n_teacher)``, starting at 0 (all of them when equal)."""
    return torch.arange(n_student) * n_teacher // n_student


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


@torch.no_grad()
def select_weights(student: nn.Module, teacher: nn.Module | dict[str, torch.Tensor]) -> int:
    """Fill every student tensor (weights, biases, BN statistics) with a uniform selection of the teacher's.

    Args:
        student (nn.Module): Narrower model with the teacher's layer names; modified in place.
        teacher (nn.Module | dict[str, torch.Tensor]): The trained, unfused teacher (or its state dict); not modified.

    Returns:
        (int): Number of tensors filled.

    Raises:
        ValueError: If the two models do not share a layout (see ``inherit_problem``).

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
    for k, v in student.state_dict().items():
        w = t[k]
        for d, n in enumerate(v.shape):
            if n != w.shape[d]:
                w = w.index_select(d, uniform_index(n, w.shape[d]).to(w.device))
        v.copy_(w)  # state_dict tensors share storage with the parameters; copy_ also casts fp16 teachers
    return len(student.state_dict())
