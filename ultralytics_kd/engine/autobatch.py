"""AutoBatch (``batch=-1`` or a fraction) with the teacher: the stock memory probe, run on student and teacher together.

The stock ``auto_batch`` profiles ``trainer.model`` alone, so under distillation it would size the batch as if the
teacher took no memory. ``with_teacher`` hands the stock probe a model whose forward is one training step's forward:
the teacher's outputs, held while the student runs forward and backward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from typing import Any

import torch
from torch import nn

__all__ = ["StudentWithTeacher", "with_teacher"]


class StudentWithTeacher(nn.Module):
    """The student beside the frozen teacher, as the memory probe sees a training batch.

    The stock probe deep-copies the model it is given; the copy here shares the teacher (frozen, and one copy in
    training too) so that only the student is counted twice, as without a teacher.

    Args:
        student (nn.Module): The student; its ``yaml``, ``stride`` and ``names`` are what the probe reads.
        teacher (nn.Module): The frozen teacher (``FrozenTeacher``), on the training device.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module):
        """Pair them."""
        super().__init__()
        self.student, self.teacher = student, teacher
        self.yaml, self.stride, self.names = student.yaml, student.stride, student.names

    def __deepcopy__(self, memo: dict) -> StudentWithTeacher:
        """Copy the student, share the teacher."""
        memo[id(self.teacher)] = self.teacher
        return StudentWithTeacher(deepcopy(self.student, memo), self.teacher)

    def forward(self, x: torch.Tensor) -> tuple[Any, dict]:
        """The teacher's outputs first (as ``KDTrainer.preprocess_batch``), then the student's."""
        teacher = self.teacher(x)
        return self.student(x), {k: v for k, v in teacher.items() if k != "head"}


@contextmanager
def with_teacher(trainer: Any) -> Iterator[None]:
    """Within the block, ``trainer.model`` is the student paired with ``trainer.teacher``, for the stock probe."""
    student = trainer.model
    trainer.model = StudentWithTeacher(student, trainer.teacher)
    try:
        yield
    finally:
        trainer.model = student
