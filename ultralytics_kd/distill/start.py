"""How a student starts: from a selection of the teacher's weights, from a mimic stage that ends with the teacher's
head, or as built.

``kd_init`` names one start (``select``, ``mimic``, ``none``) or lets ``auto`` take the first that fits the pair:
weight selection where the student has the teacher's layout (``inherit.py``), else the mimic stage where the teacher's
head fits the student's (``transplant.py``) and the run has epochs left after the stage (``stage.py``), else none.
``choose_start`` decides once, before any epoch is spent, and returns the decision with its reasons as data (``Start``);
a start named explicitly that cannot be done is an error there.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.utils import LOGGER, colorstr

from ultralytics_kd.distill.inherit import inherit_problem, select_weights
from ultralytics_kd.distill.stage import MimicStage, mimic_epochs, mimic_problem
from ultralytics_kd.distill.transplant import transplant_problem

__all__ = ["Start", "TeacherParts", "choose_start"]

PREFIX = colorstr("KD:")


@dataclass(frozen=True)
class TeacherParts:
    """What the starts read from the teacher, copied before ``FrozenTeacher`` fuses each BN into its conv.

    Attributes:
        state (dict[str, torch.Tensor] | None): The unfused state dict, for weight selection.
        head (nn.Module | None): A float copy of the unfused Detect head, for the mimic stage's transplant.
    """

    state: dict[str, torch.Tensor] | None = None
    head: nn.Module | None = None

    @classmethod
    def of(cls, teacher: nn.Module, init: str) -> TeacherParts:
        """Copy from the unfused ``teacher`` what ``kd_init=init`` may need: nothing for ``none``."""
        state = None if init == "none" else {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        return cls(state, deepcopy(teacher.model[-1]).float() if init in {"auto", "mimic"} else None)


@dataclass(frozen=True)
class Start:
    """How the student starts, and why not otherwise (``choose_start``).

    Attributes:
        mode (str): ``"select"`` (a uniform selection of the teacher's weights), ``"mimic"`` (the mimic stage, then the
            teacher's head) or ``"none"`` (as built).
        init (str): The ``kd_init`` asked for.
        kept (bool): The student came with weights of its own and keeps them.
        no_select (str | None): Why the teacher's weights do not fit the student, where that was checked.
        no_mimic (str | None): Why there is no mimic stage (the heads, or the run's length), where that was checked.
        stage_epochs (int): Length of the mimic stage; 0 without one.
    """

    mode: str = "none"
    init: str = "none"
    kept: bool = False
    no_select: str | None = None
    no_mimic: str | None = None
    stage_epochs: int = 0

    @classmethod
    def resumed(cls, state: dict, init: str) -> Start:
        """The start a resumed run took, from its checkpoint's ``"kd"`` state."""
        return cls("select" if state.get("inherited") else "mimic" if state.get("mimic") else "none", init)

    def take(self, student: nn.Module, teacher: TeacherParts) -> MimicStage | None:
        """Start ``student`` this way and say so: select the teacher's weights into it, or return the stage to run."""
        if self.kept and self.init == "select":
            LOGGER.warning(f"{PREFIX} kd_init=select skipped: the student already has weights, which are kept")
        elif self.kept and self.init != "none":
            LOGGER.info(f"{PREFIX} kd_init={self.init}: the student has weights of its own, which are kept")
        elif self.mode == "select":
            n = select_weights(student, teacher.state)
            LOGGER.info(f"{PREFIX} student starts from a uniform selection of the teacher's weights ({n} tensors)")
        elif self.mode == "mimic":
            LOGGER.info(
                f"{PREFIX} kd_init={self.init}: the student imitates the teacher's Detect inputs for the first "
                f"kd_mimic_epochs, then takes the teacher's head" + (f" ({self.no_select})" if self.no_select else "")
            )
            return MimicStage(self.stage_epochs, teacher.head)
        elif self.no_select:
            LOGGER.warning(
                f"{PREFIX} kd_init=auto: student keeps its random init ({self.no_select}; no head transplant either: "
                f"{self.no_mimic}). Loss terms alone can leave such a student below one trained without a teacher "
                f"(docs/BENCHMARKS.md): compare with a scratch run"
            )
        return None


def choose_start(
    init: str, student: nn.Module, teacher: TeacherParts, *, has_weights: bool, kd_mimic_epochs: float, epochs: int
) -> Start:
    """Decide how a new student starts.

    Args:
        init (str): ``kd_init``: ``"auto"``, ``"select"``, ``"mimic"`` or ``"none"``.
        student (nn.Module): The student as built.
        teacher (TeacherParts): The teacher's unfused parts (``TeacherParts.of(teacher, init)``).
        has_weights (bool): The student was built with weights of its own, which no start replaces.
        kd_mimic_epochs (float): The setting: epochs of the mimic stage, or a fraction of ``epochs`` below 1.
        epochs (int): Epochs of the run.

    Returns:
        (Start): The start to take, with the reasons the others were not taken.

    Raises:
        ValueError: If ``init`` names a start that this pair or run cannot take.
    """
    if has_weights or init == "none":
        return Start(init=init, kept=has_weights)
    no_select = None
    if init != "mimic":
        no_select = inherit_problem(student, teacher.state)
        if not no_select:
            return Start("select", init)
        if init == "select":
            raise ValueError(
                f"kd_init=select copies the teacher's weights into a student of the same layout, but {no_select}. "
                f"Set kd_init=none (or auto) for a student of another family"
            )
    no_mimic = transplant_problem(student.model[-1], teacher.head) or mimic_problem(kd_mimic_epochs, epochs)
    if no_mimic and init == "mimic":
        raise ValueError(
            f"kd_init=mimic imitates the teacher's features, then gives the student the teacher's Detect head, but "
            f"{no_mimic}. Set kd_init=none (or auto)"
        )
    if no_mimic:
        return Start("none", init, no_select=no_select, no_mimic=no_mimic)
    return Start("mimic", init, no_select=no_select, stage_epochs=mimic_epochs(kd_mimic_epochs, epochs))
