"""Stock training options that KDTrainer used to break (issue #28): time=, optimizer=, AutoBatch, NaN recovery and
compile= with a graft stage. Each test compares with numbers worked out here, not with the plugin's own helpers."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ultralytics import YOLO

from ultralytics_kd import KDTrainer

MODELS = Path(__file__).parents[2] / "ultralytics_kd" / "cfg" / "models"
SHUFFLE = MODELS / "yolov9-tiny-shufflev2-c2f.yaml"  # a mimic stage under the yolov8s teacher
ELAN = MODELS / "yolov9-tiny-shufflev2.yaml"  # a graft stage under a yolov9s teacher


def _rows(trainer) -> list[dict]:
    with open(trainer.csv) as f:
        return list(csv.DictReader(f))


class _Stop(Exception):
    pass


def _no_batches(trainer):
    raise AssertionError("training reached a batch")


class StageSpy(KDTrainer):
    """Records the epoch of every transplant and the stage's length at that moment."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.transplants = []

    def _kd_transplant(self):
        self.transplants.append((self.epoch, self.kd_stage.epochs))
        super()._kd_transplant()


# time= ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mimic, hours, stage, at, run",
    [
        (0.5, 3.5, 2, 2, 4),  # 4 epochs fit (ceil(3.5 h / 1 h)): a fraction stays half of them; the head at epoch 3
        (4, 3.5, 3, 2, 4),  # 4 stage epochs would leave none: 3, ended with epoch 3 (half an hour left, < 1 epoch)
        (1, 1.0, 1, 0, 2),  # no time left after epoch 1 (the estimate is 1 epoch): the stage ends with it
        (2, 0.5, 1, 0, 1),  # time is up at the first step: the stage ends with that epoch, before the run does
    ],
)
def test_time_mode_stage_follows_the_recomputed_length(mimic, hours, stage, at, run, data_yaml, teacher_pt, tiny,
                                                       tmp_path, monkeypatch):  # fmt: skip
    """With time=, the stock loop re-estimates epochs after each epoch; the stage follows that estimate, and the
    student takes the teacher's head before the run ends. A fake clock makes each epoch last one hour."""
    import ultralytics.engine.trainer as stock

    import ultralytics_kd.distill.stage as stage_module

    clock = {"t": 0.0}
    for module in (stock, stage_module):
        monkeypatch.setattr(module, "time", SimpleNamespace(time=lambda: clock["t"]), raising=False)
    model = YOLO(SHUFFLE)
    model.add_callback("on_train_epoch_start", lambda t: clock.update(t=clock["t"] + 3600))
    model.train(
        trainer=StageSpy, teacher=str(teacher_pt), data=str(data_yaml), epochs=10, time=hours, kd_mimic_epochs=mimic,
        kd_teacher_check=False, project=str(tmp_path), name="t", **tiny,
    )  # fmt: skip
    trainer = model.trainer
    assert trainer.transplants == [(at, stage)] and trainer.kd_stage.epochs == stage
    rows = _rows(trainer)
    assert len(rows) == run
    assert [float(r["train/kdmim_loss"]) > 0 for r in rows] == [e < stage for e in range(run)]
    assert torch.load(trainer.last, map_location="cpu", weights_only=False)["kd"]["transplanted"]


# optimizer= -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, iterations, expected",
    [
        ("auto", 20000, ("MuSGD", 0.01)),  # above 10,000 iterations auto picks MuSGD at lr 0.01
        ("auto", 100, ("AdamW", round(0.002 * 5 / (4 + 2), 6))),  # below, AdamW at the fitted lr for nc=2
        ("SGD", 100, ("SGD", 0.02)),
        ("AdamW", 100, ("AdamW", 0.02)),
    ],
)
def test_adapters_train_like_the_students_weights(name, iterations, expected, data_yaml, teacher_pt, tiny, tmp_path):
    """The adapters' group has the lr, momentum and decay of the student's ordinary decayed weights, whichever
    optimizer is picked (MuSGD gives the head's cv3 3x the lr; the adapters are not the head)."""
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_batch_start", _no_batches)
    with pytest.raises(AssertionError, match="reached a batch"):
        model.train(
            trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=1, kd_recipe="cwd",
            kd_teacher_check=False, project=str(tmp_path), name="o", **tiny,
        )  # fmt: skip
    trainer = model.trainer
    opt = trainer.build_optimizer(trainer.model, name, lr=0.02, momentum=0.8, decay=3e-4, iterations=iterations)
    kind, lr = expected
    assert type(opt).__name__ == kind
    adapters = {id(p) for p in trainer.kd_connectors.parameters()}
    (group,) = [g for g in opt.param_groups if adapters & {id(p) for p in g["params"]}]
    assert {id(p) for p in group["params"]} == adapters and not group.get("use_muon")
    momentum = 0.9 if name == "auto" else 0.8  # auto sets its own momentum
    assert group["lr"] == pytest.approx(lr) and group["weight_decay"] == pytest.approx(3e-4)
    assert group["betas"][0] == momentum if kind == "AdamW" else group["momentum"] == momentum


# AutoBatch ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [-1, 0.7])
def test_autobatch_probes_student_and_teacher(batch, data_yaml, teacher_pt, tiny, tmp_path, monkeypatch):
    """batch=-1 or a memory fraction: the probe that sizes the batch runs the teacher beside the student."""
    import ultralytics.engine.trainer as stock

    seen = {}

    def probe(model, imgsz, amp, batch, max_num_obj, dataset_size):
        seen["params"] = {id(p) for p in model.parameters()}
        calls = []
        trainer = seen["trainer"]
        handles = [m.register_forward_hook(lambda *_, n=n: calls.append(n)) for n, m in
                   (("teacher", trainer.teacher.model), ("student", trainer.model))]  # fmt: skip
        model(torch.zeros(2, 3, imgsz, imgsz))
        for h in handles:
            h.remove()
        seen["calls"], seen["batch"] = sorted(calls), batch
        raise _Stop

    monkeypatch.setattr(stock, "check_train_batch_size", probe)
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_pretrain_routine_start", lambda t: seen.update(trainer=t))
    with pytest.raises(_Stop):
        model.train(
            trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=1, kd_teacher_check=False,
            project=str(tmp_path), name="b", **{**tiny, "batch": batch},
        )  # fmt: skip
    trainer = seen["trainer"]
    teacher = {id(p) for p in trainer.teacher.parameters()}
    student = {id(p) for p in trainer.model.parameters()}
    assert seen["batch"] == batch and teacher <= seen["params"] and student & seen["params"] == student
    assert seen["calls"] == ["student", "teacher"]


# NaN recovery ---------------------------------------------------------------------------------------------------------
class RecoverySpy(StageSpy):
    """Records, at each stock NaN recovery, the checkpoint it loads and the state right after."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recoveries = []

    def _handle_nan_recovery(self, epoch):
        kd = torch.load(self.last, map_location="cpu", weights_only=False)["kd"] if self.last.exists() else None
        recovered = super()._handle_nan_recovery(epoch)
        if recovered:
            self.recoveries.append(
                {
                    "epoch": epoch,
                    "ckpt": kd,
                    "adapters": {k: v.detach().cpu().clone() for k, v in self.kd_connectors.state_dict().items()},
                    "transplanted": self.kd_stage.transplanted if self.kd_stage else None,
                }
            )
        return recovered


def _nan_at_epoch(monkeypatch, term_cls, epoch: int):
    """Make every value of ``term_cls`` NaN during the first pass through ``epoch`` (0-based); returns the callback
    that arms it at each epoch start."""
    state = {"on": False, "seen": 0}
    forward = term_cls.forward

    def nan_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        return out * float("nan") if state["on"] else out

    def arm(trainer):
        state["seen"] += trainer.epoch == epoch
        state["on"] = trainer.epoch == epoch and state["seen"] == 1

    monkeypatch.setattr(term_cls, "forward", nan_forward)
    return arm


def test_nan_in_a_kd_term_goes_to_stock_recovery_with_the_adapters(data_yaml, teacher_pt, tiny, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """A NaN CWD term in epoch 2 makes the loss NaN (no exception); the stock recovery reloads last.pt, adapters
    included, and the epoch is trained again to a finite end."""
    from ultralytics_kd.distill.losses.cwd import ChannelWiseDistill

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_start", _nan_at_epoch(monkeypatch, ChannelWiseDistill, 1))
    model.train(
        trainer=RecoverySpy, teacher=str(teacher_pt), data=str(data_yaml), epochs=3, kd_recipe="cls_bce+cwd",
        kd_teacher_check=False, project=str(tmp_path), name="n", **tiny,
    )  # fmt: skip
    trainer = model.trainer
    (rec,) = trainer.recoveries
    saved = rec["ckpt"]["connectors"]
    assert rec["epoch"] == 1 and saved and rec["adapters"].keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(rec["adapters"][k], v), k
    rows = _rows(trainer)
    assert len(rows) == 3 and all(math.isfinite(float(r["train/kdcwd_loss"])) for r in rows)
    assert all(torch.isfinite(p).all() for p in trainer.kd_connectors.parameters())


def test_nan_just_after_the_transplant_redoes_it(data_yaml, teacher_pt, tiny, tmp_path, monkeypatch):
    """A NaN right after the mimic stage reloads last.pt, written before the transplant: the stage goes back to
    'not transplanted' with it, and the student takes the teacher's head again when the epoch is redone."""
    from ultralytics_kd.distill.losses.cls_bce import ClassBCE

    model = YOLO(SHUFFLE)
    model.add_callback("on_train_epoch_start", _nan_at_epoch(monkeypatch, ClassBCE, 1))
    model.train(
        trainer=RecoverySpy, teacher=str(teacher_pt), data=str(data_yaml), epochs=3, kd_mimic_epochs=1,
        kd_init="mimic", kd_recipe="cls_bce", kd_weights=[1.0], kd_teacher_check=False, project=str(tmp_path), name="m",
        **tiny,
    )  # fmt: skip
    trainer = model.trainer
    (rec,) = trainer.recoveries
    assert rec["epoch"] == 1 and rec["ckpt"]["transplanted"] is False and rec["transplanted"] is False
    assert [e for e, _ in trainer.transplants] == [1, 1]  # once in the NaN pass, once in the redone epoch
    assert torch.load(trainer.last, map_location="cpu", weights_only=False)["kd"]["transplanted"]
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())


# compile= -------------------------------------------------------------------------------------------------------------
def test_compile_refused_for_a_graft_start(data_yaml, tiny, tmp_path, untrained):
    """compile=True with a graft start (its stage hooks student layers on every batch) fails before any batch, and
    the message names the fixes."""
    teacher = untrained("yolov9s.yaml", tmp_path / "v9s.pt")
    model = YOLO(ELAN)
    model.add_callback("on_train_batch_start", _no_batches)
    with pytest.raises(ValueError, match=r"compile=True .*graft.*(kd_init=mimic|compile=False)"):
        model.train(
            trainer=KDTrainer, teacher=str(teacher), data=str(data_yaml), epochs=3, compile=True,
            kd_teacher_check=False, project=str(tmp_path), name="c", **tiny,
        )  # fmt: skip
