"""Connectors: tiny trainable modules whose only job is to map student features to the teacher's channel count.

They are trained with the student (their own optimizer group) but live outside the student model, so they never reach
a student checkpoint's model; the trainer saves their weights beside it for resuming.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from ultralytics.utils.torch_utils import unwrap_model

__all__ = ["ChannelAdapter", "adapter_group", "build_connectors", "clip_adapter_grads"]


class ChannelAdapter(nn.Sequential):
    """1x1 convolution plus BatchNorm from ``c_student`` to ``c_teacher`` channels.

    Args:
        c_student (int): Student channels.
        c_teacher (int): Teacher channels.

    Examples:
        >>> import torch
        >>> ChannelAdapter(16, 32)(torch.zeros(2, 16, 4, 4)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(self, c_student: int, c_teacher: int):
        """Build conv + BN; BN keeps the adapted maps on a scale the loss can compare whatever the student's scale."""
        super().__init__(nn.Conv2d(c_student, c_teacher, 1, bias=False), nn.BatchNorm2d(c_teacher))


def build_connectors(
    student_channels: Sequence[int],
    teacher_channels: Sequence[int],
    factory: Callable[[int, int], nn.Module] = ChannelAdapter,
) -> nn.ModuleList:
    """One adapter per feature level.

    Args:
        student_channels (Sequence[int]): Channels of each student level.
        teacher_channels (Sequence[int]): Channels of the paired teacher levels.
        factory (Callable[[int, int], nn.Module]): Builds one level's module from (student, teacher) channels; a
            term's ``connector``.

    Returns:
        (nn.ModuleList): Adapters in level order.
    """
    if len(student_channels) != len(teacher_channels):
        raise ValueError(f"{len(student_channels)} student levels but {len(teacher_channels)} teacher levels")
    return nn.ModuleList(factory(s, t) for s, t in zip(student_channels, teacher_channels))


def adapter_group(optimizer: Optimizer, student: nn.Module, params: Iterable[nn.Parameter]) -> dict[str, Any]:
    """The adapters' parameter group: the settings of the group that holds the student's ordinary decayed weights.

    That group is found through a backbone weight rather than by position: MuSGD (``optimizer=auto`` above 10,000
    iterations) leads with a copy of the decayed group at 3x the learning rate for the head's ``cv3``, and puts conv
    weights in Muon groups. The adapters take that group's lr, momentum and decay as a plain SGD-style group (Muon
    orthogonalises matrices; an adapter also has BatchNorm vectors).

    Args:
        optimizer (Optimizer): The stock optimizer, built for ``student``.
        student (nn.Module): The student (DDP-wrapped or not).
        params (Iterable[nn.Parameter]): The adapters' parameters.

    Returns:
        (dict[str, Any]): A group for ``optimizer.add_param_group``, named ``"kd_adapter"``.
    """
    ref = next(p for m in unwrap_model(student).model[:-1] for p in m.parameters() if p.ndim > 1)
    template = next(g for g in optimizer.param_groups if any(p is ref for p in g["params"]))
    settings = {k: v for k, v in template.items() if k not in {"params", "use_muon", "param_group"}}
    return {**settings, "params": list(params), "param_group": "kd_adapter"}


def clip_adapter_grads(connectors: nn.Module, scaler: Any, max_norm: float = 10.0) -> None:
    """Clip the adapters' gradient norm as the stock step clips the student's (which does not see the adapters).

    The stock step unscales AMP gradients itself and a second ``unscale_`` is an error, so the bound is scaled
    instead: clipping scaled gradients at ``max_norm * scale`` equals clipping the unscaled ones at ``max_norm``.
    """
    params = [p for p in connectors.parameters() if p.grad is not None]
    if params:
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm * scale)
