"""MimicStage: its schedule, its trigger and its checkpoint state, on a stand-in trainer (no training)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ultralytics_kd import KDTrainer
from ultralytics_kd.distill.stage import NO_STAGE_STATE, MimicStage, mimic_epochs, mimic_problem


def test_stage_length_and_room():
    assert [mimic_epochs(v, 10) for v in (0.25, 0.01, 3, 3.4)] == [2, 1, 3, 3]
    assert mimic_problem(2, 3) is None
    assert mimic_problem(2, 2) == "kd_mimic_epochs=2 gives 2 mimic epochs of 2, leaving none to train the detector"


@pytest.mark.parametrize("cos_lr", [False, True])
def test_each_part_has_a_stock_schedule_of_its_length(cos_lr):
    lf = MimicStage(4).lr_factor(epochs=10, lrf=0.1, cos_lr=cos_lr)
    assert lf(0) == lf(4) == 1.0  # the rest of the run restarts at lr0
    if not cos_lr:
        assert lf(2) == pytest.approx(0.55) and lf(7) == pytest.approx(0.55)  # half-way through each part
    assert lf(3.999) < 1.0 and lf(9.999) == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize(
    "value, epochs, done, expected",
    [
        (0.25, 8, 1, 2),  # a fraction of the new length
        (0.5, 2, 1, 1),
        (5, 4, 1, 3),  # a count, capped to leave one epoch after the stage
        (3, 2, 1, 1),
        (0.25, 4, 2, 2),  # never shorter than the epochs it has already run (it ends at the next batch)
        (0.25, 40, 0, 10),  # set-up: no epoch run yet
    ],
)
def test_stage_follows_a_re_estimated_run(value, epochs, done, expected):
    """time= re-estimates ``epochs`` after each epoch; a stage not yet over follows, one over keeps its length."""
    t = SimpleNamespace(epochs=epochs, args=SimpleNamespace(kd_mimic_epochs=value), world_size=1)
    if done:
        t.epoch = done - 1
    stage = MimicStage(7)
    stage.follow(t)
    assert stage.epochs == expected
    over = MimicStage(7)
    over.transplanted = True
    over.follow(t)
    assert over.epochs == 7
    lf = MimicStage(2).lr_factor(epochs=2, lrf=0.1, cos_lr=False)  # a run re-estimated to the stage's length
    assert lf(1) == pytest.approx(0.55) and lf(2) == 1.0 and lf(2.5) == pytest.approx(0.55)  # the rest: 1 epoch


def test_trigger_hands_over_once_at_the_first_batch_after_the_stage():
    stage = MimicStage(2)
    calls = []
    groups = [{"param_group": "weight", "initial_lr": 0.01, "momentum": 0.9}]
    t = SimpleNamespace(
        args=SimpleNamespace(warmup_epochs=0, nbs=64), train_loader=range(3), epochs=4, batch_size=16,
        optimizer=SimpleNamespace(param_groups=groups), lf=lambda x: 1.0, accumulate=4,
    )  # fmt: skip

    def transplant():
        calls.append(t.epoch)
        stage.transplanted = True

    t._kd_transplant = transplant
    for epoch in range(4):
        t.epoch = epoch
        for i in range(3):
            stage.on_train_batch_start(t, i)
            assert t.accumulate == (1 if epoch < 2 else 4)  # one step per batch inside the stage
            t.accumulate = 4
    assert calls == [2]


def test_checkpoint_state_round_trip():
    stage = MimicStage(2, teacher_head=torch.nn.Identity())
    stage.term([torch.zeros(1, 2, 3, 3)], [torch.randn(1, 2, 3, 3)])  # gathers teacher statistics
    state = {**stage.state_dict(), "transplanted": True}
    assert state.keys() == NO_STAGE_STATE.keys() and state["mimic"]
    resumed = MimicStage(2, teacher_head=torch.nn.Identity())
    resumed.load_state_dict(state)
    assert resumed.transplanted and resumed.teacher_head is None
    with pytest.raises(RuntimeError, match="before the transplant"):  # its teacher head is gone: nothing to redo
        resumed.load_state_dict({**state, "transplanted": False})
    assert all(torch.equal(a, b) for a, b in zip(resumed.term.std, stage.term.std)) and len(resumed.term.std) == 1


def test_each_stage_warms_up_like_a_run_of_its_length():
    """With a mimic stage the stock warm-up is off; each stage ramps lr (bias lr down), momentum and, after the stage,
    accumulate over its share of warmup_epochs: 40 epochs, 10 of them mimic, 13 batches -> 10 and 29 iterations."""
    groups = [{"param_group": g, "initial_lr": 0.01, "momentum": 0.937} for g in ("bias", "weight")]
    t = SimpleNamespace(
        args=SimpleNamespace(warmup_epochs=3, warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.937, nbs=64),
        train_loader=range(13), kd_stage=MimicStage(10), epochs=40, batch_size=16, accumulate=1,
        optimizer=SimpleNamespace(param_groups=groups), lf=lambda x: 1.0 if x < 10 else 0.5,
    )  # fmt: skip
    assert KDTrainer._get_warmup_iterations(t, 13) == 0

    def at(epoch, i, mimic):
        t.epoch = epoch
        t.kd_stage.warm_up(t, i, mimic)
        return [round(g["lr"], 6) for g in groups], round(groups[0]["momentum"], 6), t.accumulate

    assert at(0, 5, True) == ([0.055, 0.005], 0.8685, 1)
    assert at(0, 11, True) == ([0.055, 0.005], 0.8685, 1)  # past the stage's 10 warm-up iterations: left alone
    assert at(10, 0, False) == ([0.1, 0.0], 0.8, 1)  # the second stage starts its own warm-up
    f = 14 / 29
    assert at(11, 1, False) == ([round(0.1 - f * 0.095, 6), round(f * 0.005, 6)], round(0.8 + f * 0.137, 6), 2)
    assert at(12, 3, False) == ([0.005, 0.005], 0.937, 4)
