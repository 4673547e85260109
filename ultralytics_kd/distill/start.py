"""How a student starts: from a selection of the teacher's weights, from a stage that ends by grafting the teacher's
neck and head or transplanting its head, or as built.

``kd_init`` names one start (``select``, ``graft``, ``mimic``, ``none``) or lets ``auto`` take the first that fits the
pair: weight selection where the student has the teacher's layout (``inherit.py``) and its channels pair exactly with
the teacher's (``channels.py``), else a graft where its layers after the backbone have both, else the mimic stage
where the teacher's head fits the student's (``transplant.py``); a stage needs epochs left after it (``stage.py``).
Else none. Where auto passes over a selection only because the channels do not pair, it warns.
``choose_start`` decides once, before any epoch is spent, and returns the decision with its reasons as data (``Start``);
a start named explicitly that cannot be done is an error there.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field

import torch
from torch import nn
from ultralytics.utils import LOGGER, colorstr

from ultralytics_kd.distill.inherit import Graft, inherit_problem, layout, select_problem, select_weights
from ultralytics_kd.distill.stage import MimicStage, mimic_epochs, mimic_problem
from ultralytics_kd.distill.tracing import ChannelTrace
from ultralytics_kd.distill.transplant import transplant_problem

__all__ = ["Start", "TeacherParts", "choose_start"]

PREFIX = colorstr("KD:")


@dataclass(frozen=True)
class TeacherParts:
    """What the starts read from the teacher, copied before ``FrozenTeacher`` fuses each BN into its conv.

    Attributes:
        state (dict[str, torch.Tensor] | None): The unfused state dict, for weight selection and grafts.
        head (nn.Module | None): A float copy of the unfused Detect head, for the mimic stage's transplant.
        layout (tuple[tuple[str, tuple[int, ...]], ...]): Each layer's class and inputs (``inherit.layout``), for
            grafts.
        trace (ChannelTrace | None): The teacher's calls in one forward pass, to pair its channels with the student's
            (``channels.channel_plan``), for selections and grafts.
    """

    state: dict[str, torch.Tensor] | None = None
    head: nn.Module | None = None
    layout: tuple = ()
    trace: ChannelTrace | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, teacher: nn.Module, init: str) -> TeacherParts:
        """Copy from the unfused ``teacher`` what ``kd_init=init`` may need: nothing for ``none``."""
        state = None if init == "none" else {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        head = deepcopy(teacher.model[-1]).float() if init in {"auto", "mimic"} else None
        trace = ChannelTrace.of(teacher) if init in {"auto", "select", "graft"} else None
        return cls(state, head, () if state is None else tuple(layout(teacher)), trace)

    def stage(self, start: Start) -> MimicStage | None:
        """The stage that ``start`` runs (a graft's or a head transplant's), with what it hands over; None without."""
        if start.mode == "graft":
            return MimicStage(start.stage_epochs, graft=start.graft, teacher_state=self.state)
        return MimicStage(start.stage_epochs, self.head) if start.mode == "mimic" else None


@dataclass(frozen=True)
class Start:
    """How the student starts, and why not otherwise (``choose_start``).

    Attributes:
        mode (str): ``"select"`` (a uniform selection of the teacher's weights), ``"graft"`` (the stage, then a
            selection of the teacher's neck and head), ``"mimic"`` (the stage, then the teacher's head) or ``"none"``
            (as built).
        init (str): The ``kd_init`` asked for.
        kept (bool): The student came with weights of its own and keeps them.
        no_select (str | None): Why the teacher's weights do not fit the student, where that was checked.
        no_graft (str | None): Why the student cannot take the teacher's neck and head, where that was checked.
        no_mimic (str | None): Why there is no mimic stage (the heads, or the run's length), where that was checked.
        stage_epochs (int): Length of the stage; 0 without one.
        graft (Graft | None): What a graft takes, for mode ``"graft"``.
    """

    mode: str = "none"
    init: str = "none"
    kept: bool = False
    no_select: str | None = None
    no_mimic: str | None = None
    stage_epochs: int = 0
    no_graft: str | None = None
    graft: Graft | None = None

    @classmethod
    def resumed(cls, state: dict, init: str, student: nn.Module, teacher: TeacherParts, epochs: int) -> Start:
        """The start a resumed run took, from its checkpoint's ``"kd"`` state (a graft is planned again)."""
        if state.get("graft"):
            graft = Graft.of(student, teacher.layout, teacher.state, teacher.trace)[0]
            return cls("graft", init, stage_epochs=epochs, graft=graft)
        if state.get("mimic"):
            return cls("mimic", init, stage_epochs=epochs)
        return cls("select" if state.get("inherited") else "none", init)

    def take(self, student: nn.Module, teacher: TeacherParts) -> MimicStage | None:
        """Start ``student`` this way and say so: select the teacher's weights into it, or return the stage to run."""
        if self.kept and self.init == "select":
            LOGGER.warning(f"{PREFIX} kd_init=select skipped: the student already has weights, which are kept")
        elif self.kept and self.init != "none":
            LOGGER.info(f"{PREFIX} kd_init={self.init}: the student has weights of its own, which are kept")
        elif self.mode == "select":
            n = select_weights(student, teacher.state, teacher.trace)
            LOGGER.info(
                f"{PREFIX} student starts from a selection of the teacher's weights ({n} tensors, evenly spaced "
                f"channels within each Concat part, split and attention head)"
            )
        elif self.mode == "graft":
            LOGGER.info(
                f"{PREFIX} kd_init={self.init}: the student's {self.graft.describe(len(student.model))} have the "
                f"teacher's layout; its backbone outputs imitate the teacher's for the first {self.stage_epochs} "
                f"epochs, then those layers take a selection of the teacher's"
                + (f" ({self.no_select})" if self.no_select else "")
            )
        elif self.mode == "mimic":
            LOGGER.info(
                f"{PREFIX} kd_init={self.init}: the student imitates the teacher's Detect inputs for the first "
                f"{self.stage_epochs} epochs, then takes the teacher's head"
                + (f" ({self.no_select}; no graft: {self.no_graft})" if self.no_select else "")
            )
        elif self.no_select:
            LOGGER.warning(
                f"{PREFIX} kd_init=auto: student keeps its random init ({self.no_select}; no graft: {self.no_graft}; "
                f"no head transplant either: {self.no_mimic}). Loss terms alone can leave such a student below one "
                f"trained without a teacher (docs/BENCHMARKS.md): compare with a scratch run"
            )
        return teacher.stage(self)


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
    no_select = no_graft = None
    if init in {"auto", "select"}:
        no_select = inherit_problem(student, teacher.state)
        no_channels = None if no_select else select_problem(student, teacher.trace)  # same layout, channels unpaired
        no_select = no_select or no_channels
        if no_channels and init == "auto":
            LOGGER.warning(
                f"{PREFIX} kd_init=auto: no weight selection, as {no_select}; trying a graft, then a mimic stage"
            )
        if not no_select:
            return Start("select", init)
        if init == "select":
            other = "kd_init=none (or auto) for a student of another family"
            fix = "kd_init=auto (a mimic stage instead) or none" if no_channels else other
            raise ValueError(
                f"kd_init=select copies the teacher's weights into a student of the same layout, but {no_select}. "
                f"Set {fix}"
            )
    if init in {"auto", "graft"}:
        graft, no_graft = Graft.of(student, teacher.layout, teacher.state, teacher.trace)
        no_graft = no_graft or mimic_problem(kd_mimic_epochs, epochs)
        if not no_graft:
            return Start(
                "graft", init, no_select=no_select, stage_epochs=mimic_epochs(kd_mimic_epochs, epochs), graft=graft
            )
        if init == "graft":
            raise ValueError(
                f"kd_init=graft trains the student's backbone to reproduce the teacher's, then gives the layers after "
                f"it a selection of the teacher's, but {no_graft}. Set kd_init=auto (or none)"
            )
    no_mimic = transplant_problem(student.model[-1], teacher.head) or mimic_problem(kd_mimic_epochs, epochs)
    if no_mimic and init == "mimic":
        raise ValueError(
            f"kd_init=mimic imitates the teacher's features, then gives the student the teacher's Detect head, but "
            f"{no_mimic}. Set kd_init=none (or auto)"
        )
    if no_mimic:
        return Start("none", init, no_select=no_select, no_mimic=no_mimic, no_graft=no_graft)
    stage_epochs = mimic_epochs(kd_mimic_epochs, epochs)
    return Start("mimic", init, no_select=no_select, stage_epochs=stage_epochs, no_graft=no_graft)
