"""Start strategies: ``choose_start`` picks select, graft, mimic or none per pair and run; it refuses the impossible."""

from __future__ import annotations

from pathlib import Path

import pytest
from ultralytics.nn.tasks import DetectionModel

import ultralytics_kd  # noqa: F401  (registers the ShuffleV2 block)
from ultralytics_kd.distill import start as start_module
from ultralytics_kd.distill.inherit import inherit_problem
from ultralytics_kd.distill.stage import MimicStage
from ultralytics_kd.distill.start import Start, TeacherParts, choose_start

SHUFFLE = str(Path(__file__).parents[2] / "ultralytics_kd" / "cfg" / "models" / "yolov9-tiny-shufflev2-c2f.yaml")
ELAN = str(Path(__file__).parents[2] / "ultralytics_kd" / "cfg" / "models" / "yolov9-tiny-shufflev2.yaml")


@pytest.fixture(scope="module")
def teacher():
    return DetectionModel("yolov8s.yaml", nc=2, verbose=False)


def _choose(init, student, teacher, has_weights=False, kd_mimic_epochs=0.25, epochs=8):
    s = DetectionModel(student, nc=2, verbose=False)
    parts = TeacherParts.of(teacher, init)
    return choose_start(init, s, parts, has_weights=has_weights, kd_mimic_epochs=kd_mimic_epochs, epochs=epochs), s


def test_teacher_parts_copy_only_what_the_init_needs(teacher):
    assert TeacherParts.of(teacher, "none") == TeacherParts()
    select, auto = TeacherParts.of(teacher, "select"), TeacherParts.of(teacher, "auto")
    assert select.head is None and select.state.keys() == teacher.state_dict().keys()
    assert auto.head is not teacher.model[-1] and type(auto.head) is type(teacher.model[-1])


def test_decisions_per_pair_and_run(teacher):
    start, _ = _choose("auto", "yolov8n.yaml", teacher)
    assert start == Start("select", "auto")
    start, student = _choose("auto", SHUFFLE, teacher, epochs=8)  # no layout to select from: the mimic stage, 2 epochs
    assert (start.mode, start.stage_epochs, start.no_mimic) == ("mimic", 2, None)
    assert start.no_select == inherit_problem(student, teacher)
    start, _ = _choose("mimic", "yolov8n.yaml", teacher, kd_mimic_epochs=3)  # asked for: selection is not tried
    assert start == Start("mimic", "mimic", stage_epochs=3)
    start, _ = _choose("auto", SHUFFLE, teacher, kd_mimic_epochs=2, epochs=2)  # no room for a stage: none, two reasons
    assert start.mode == "none" and start.no_select and "leaving none to train the detector" in start.no_mimic
    assert _choose("auto", "yolov8n.yaml", teacher, has_weights=True)[0] == Start("none", "auto", kept=True)
    assert _choose("none", "yolov8n.yaml", teacher)[0] == Start("none", "none")


def test_explicit_starts_that_cannot_be_taken_raise(teacher):
    with pytest.raises(ValueError, match="kd_init=select copies the teacher's weights"):
        _choose("select", SHUFFLE, teacher)
    with pytest.raises(ValueError, match="kd_init=mimic .* end-to-end"):
        _choose("mimic", "yolo26n.yaml", teacher)


def test_take_selects_or_returns_the_stage(teacher):
    start, student = _choose("select", "yolov8n.yaml", teacher)
    parts = TeacherParts.of(teacher, "select")
    assert start.take(student, parts) is None
    assert student.model[0].conv.weight.equal(teacher.model[0].conv.weight[::2])  # 16 of the teacher's 32 channels
    start, student = _choose("auto", SHUFFLE, teacher)
    parts = TeacherParts.of(teacher, "auto")
    stage = start.take(student, parts)
    assert isinstance(stage, MimicStage) and stage.epochs == 2 and stage.teacher_head is parts.head


def test_a_student_with_the_teachers_neck_and_head_is_grafted():
    """Under YOLOv9-s, auto grafts the ShuffleV2 student with YOLOv9-t's neck and head (nothing to select as a whole);
    the ShuffleV2 student with its own neck falls through to the head transplant; kd_init=graft refuses it."""
    v9s = DetectionModel("yolov9s.yaml", nc=2, verbose=False)
    start, student = _choose("auto", ELAN, v9s, epochs=8)
    assert (start.mode, start.stage_epochs, start.graft.start, start.graft.entries) == (
        "graft",
        2,
        8,
        ((5, 4), (6, 6), (7, 9)),
    )
    assert start.no_select == inherit_problem(student, v9s)
    parts = TeacherParts.of(v9s, "auto")
    stage = start.take(student, parts)
    assert isinstance(stage, MimicStage) and stage.graft == start.graft and stage.teacher_state is parts.state
    assert stage.term.name == "graft" and stage.term.source == "entries"
    start, _ = _choose("auto", SHUFFLE, v9s)
    assert start.mode == "mimic" and start.no_graft == "no layer before the Detect head has the teacher's layout"
    assert _choose("auto", ELAN, v9s, has_weights=True)[0] == Start("none", "auto", kept=True)  # never re-initialised
    with pytest.raises(ValueError, match="but the whole student has the teacher's layout"):  # kd_init=select's case
        _choose("graft", "yolov9t.yaml", v9s)
    with pytest.raises(ValueError, match="kd_init=graft trains the student's backbone .* no layer before"):
        _choose("graft", SHUFFLE, v9s)
    with pytest.raises(ValueError, match="leaving none to train the detector"):
        _choose("graft", ELAN, v9s, kd_mimic_epochs=2, epochs=2)


def _concat_then_adown(first: int) -> DetectionModel:
    """Conv ``first`` and Conv 16 concatenated, then ADown (which halves its input), one-level Detect."""
    layers = [[-1, 1, "Conv", [first, 3, 2]], [-1, 1, "Conv", [16, 3, 1]], [[0, 1], 1, "Concat", [1]]]
    cfg = {"nc": 2, "backbone": [*layers, [-1, 1, "ADown", [16]]], "head": [[[3], 1, "Detect", ["nc"]]]}
    return DetectionModel(cfg, verbose=False)


def test_a_student_whose_channels_cannot_be_paired_is_not_selected(monkeypatch):
    """Same layout, but ADown halves the student's 16 + 16 at the Concat's seam and the teacher's 32 + 16 inside its
    first part: auto says so and takes the mimic stage; kd_init=select refuses with the reason and the fix."""
    student, teacher = _concat_then_adown(16), _concat_then_adown(32)
    assert inherit_problem(student, teacher) is None  # the names and shapes alone would allow a selection
    warnings = []
    monkeypatch.setattr(start_module.LOGGER, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    parts = TeacherParts.of(teacher, "auto")
    start = choose_start("auto", student, parts, has_weights=False, kd_mimic_epochs=0.25, epochs=8)
    reason = "the split in model.3 cuts the teacher's channels where the student's are not cut"
    assert start.mode == "mimic" and start.no_select == (
        f"its channels cannot be paired exactly with the teacher's ({reason})"
    )
    assert len(warnings) == 1 and "kd_init=auto: no weight selection" in warnings[0] and reason in warnings[0]
    with pytest.raises(ValueError, match=r"kd_init=select .* split in model.3 .*Set kd_init=auto \(a mimic stage"):
        choose_start(
            "select", student, TeacherParts.of(teacher, "select"), has_weights=False, kd_mimic_epochs=0.25, epochs=8
        )


def test_a_graft_whose_channels_cannot_be_paired_is_refused():
    """The student's layers 2-5 have the teacher's layout under a max-pool where the teacher has a Conv, but the ADown
    of both halves a Concat of the backbone output (16 of the teacher's 32 channels) and layer 2 (16 of 16) at different
    seams: kd_init=graft refuses with the reason, auto passes over the graft and says why."""
    head = [[[1, 2], 1, "Concat", [1]], [-1, 1, "ADown", [16]], [[4], 1, "Detect", ["nc"]]]

    def model(width: int, second: list) -> DetectionModel:
        backbone = [[-1, 1, "Conv", [width, 3, 2]], second, [-1, 1, "Conv", [16, 1]]]
        return DetectionModel({"nc": 2, "backbone": backbone, "head": head}, verbose=False)

    student = model(16, [-1, 1, "nn.MaxPool2d", [3, 1, 1]])
    teacher = model(32, [-1, 1, "Conv", [32, 3, 1]])
    reason = (
        "the channels of its layers 2-5 cannot be paired exactly (the split in model.4 cuts the teacher's channels "
        "where the student's are not cut)"
    )
    start = choose_start(
        "auto", student, TeacherParts.of(teacher, "auto"), has_weights=False, kd_mimic_epochs=0.25, epochs=8
    )
    assert start.mode == "mimic" and start.no_graft == reason
    with pytest.raises(ValueError, match=r"kd_init=graft trains .* cannot be paired exactly .* Set kd_init=auto"):
        choose_start(
            "graft", student, TeacherParts.of(teacher, "graft"), has_weights=False, kd_mimic_epochs=0.25, epochs=8
        )
