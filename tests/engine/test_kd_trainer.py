"""KDTrainer end to end at tiny sizes: frozen teacher, gradients, columns, checkpoints, resume, DDP args, bad input."""

from __future__ import annotations

import logging
import math
import pickle
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO
from ultralytics.utils import DEFAULT_CFG_DICT, LOGGER

from ultralytics_kd import KDTrainer
from ultralytics_kd.distill.settings import kd_args

SHUFFLE = Path(__file__).parents[2] / "ultralytics_kd" / "cfg" / "models" / "yolov9-tiny-shufflev2-c2f.yaml"
ELAN = SHUFFLE.with_name("yolov9-tiny-shufflev2.yaml")
ALL_TERMS = "cls_bce+cls_kl+ld+box+feat_mse+cwd+sl2+crosskd+mgd"
KD_COLUMNS = [
    "kdcls_loss",
    "kdkl_loss",
    "kdld_loss",
    "kdbox_loss",
    "kdmse_loss",
    "kdcwd_loss",
    "kdsl2_loss",
    "kdxkd_loss",
    "kdmgd_loss",
]


class SpyTrainer(KDTrainer):
    """Records, at every optimizer step, where gradients are and whether the teacher stayed frozen."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_before = {k: v.clone() for k, v in self.teacher.state_dict().items()}
        self.steps = []

    def optimizer_step(self):
        student = [p for p in self.model.parameters() if p.requires_grad]
        self.steps.append(
            {
                "student": sum(float(p.grad.abs().sum()) for p in student if p.grad is not None),
                "adapters": {
                    name: all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
                    for name, m in self.kd_connectors.items()
                },
                "teacher_grad": any(p.grad is not None or p.requires_grad for p in self.teacher.parameters()),
                "teacher_training": any(m.training for m in self.teacher.modules()),
            }
        )
        super().optimizer_step()


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _csv(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def kd_run(data_yaml, teacher_pt, tiny, tmp_path_factory):
    """Distil the 1-epoch yolov8s teacher into yolov8n with every term at once, for 2 epochs."""
    handler = _Capture()
    LOGGER.addHandler(handler)
    try:
        model = YOLO("yolov8n.yaml")
        model.train(
            trainer=SpyTrainer,
            teacher=str(teacher_pt),
            data=str(data_yaml),
            epochs=2,
            kd_recipe=ALL_TERMS,
            kd_max_ratio=0.0,
            project=str(tmp_path_factory.mktemp("kd_run")),
            name="kd",
            **tiny,
        )
    finally:
        LOGGER.removeHandler(handler)
    return model, model.trainer, handler.messages


@pytest.fixture(scope="module")
def plain_run(data_yaml, tiny, tmp_path_factory):
    """The same student trained without distillation, for checkpoint comparison."""
    model = YOLO("yolov8n.yaml")
    model.train(data=str(data_yaml), epochs=1, project=str(tmp_path_factory.mktemp("plain")), name="p", **tiny)
    return model.trainer


def test_teacher_is_frozen_and_bit_identical(kd_run):
    _, trainer, _ = kd_run
    after = trainer.teacher.state_dict()
    assert trainer.teacher_before.keys() == after.keys()
    assert all(torch.equal(trainer.teacher_before[k], after[k].cpu()) for k in after)  # incl. BN running stats
    assert trainer.steps and not any(s["teacher_grad"] or s["teacher_training"] for s in trainer.steps)
    teacher_ids = {id(p) for p in trainer.teacher.parameters()}
    assert not any(id(p) in teacher_ids for g in trainer.optimizer.param_groups for p in g["params"])


def test_gradients_reach_student_and_adapters(kd_run):
    _, trainer, _ = kd_run
    assert all(s["student"] > 0 for s in trainer.steps)
    assert set(trainer.steps[0]["adapters"]) == {"feat_mse", "cwd", "sl2", "crosskd", "mgd"}
    assert all(type(m).__name__ == "MaskedGenerator" for m in trainer.kd_connectors["mgd"])  # the term's own connector
    assert all(all(s["adapters"].values()) for s in trainer.steps)
    adapter_group = [g for g in trainer.optimizer.param_groups if g.get("param_group") == "kd_adapter"]
    assert len(adapter_group) == 1 and len(adapter_group[0]["params"]) == len(list(trainer.kd_connectors.parameters()))


def test_adapter_gradients_are_clipped(kd_run):
    _, trainer, _ = kd_run
    params = list(trainer.kd_connectors.parameters())
    for p in params:
        p.grad = torch.full_like(p, 1e3)
    trainer.clip_adapter_grads(max_norm=10.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert norm == pytest.approx(10.0, rel=1e-3)  # was 1e3 * sqrt(n)
    for p in params:
        p.grad = None


def test_kd_columns_in_results_csv_finite_and_nonzero(kd_run):
    _, trainer, _ = kd_run
    rows = _csv(trainer.csv)
    assert len(rows) == 2
    for row in rows:
        for col in KD_COLUMNS:
            v = float(row[f"train/{col}"])
            assert math.isfinite(v) and v > 0, (col, v)
            assert float(row[f"val/{col}"]) == 0.0  # validation scores the student only
    assert trainer.loss_names == ("box_loss", "cls_loss", "dfl_loss", *KD_COLUMNS)


def test_kd_report_written_at_train_end(kd_run):
    _, trainer, _ = kd_run
    report = (trainer.save_dir / "kd_report.md").read_text()
    assert "Teacher on val before training" in report and "kd_losses.png" in report
    assert (trainer.save_dir / "kd_losses.png").stat().st_size > 0 and (trainer.save_dir / "kd_map.png").is_file()


def test_teacher_check_ran_and_warned(kd_run):
    _, trainer, warnings = kd_run
    assert trainer.kd_teacher_metrics is not None and "metrics/mAP50(B)" in trainer.kd_teacher_metrics
    assert any("teacher reaches only mAP50" in m for m in warnings)


def test_checkpoint_holds_no_teacher(kd_run, plain_run, teacher_pt):
    _, trainer, _ = kd_run
    for f in (trainer.last, trainer.best):
        ckpt = torch.load(f, map_location="cpu", weights_only=False)
        plain = torch.load(plain_run.last, map_location="cpu", weights_only=False)
        student = ckpt["model"]
        assert student.state_dict().keys() == plain["model"].state_dict().keys()
        assert getattr(student, "criterion", None) is None
        assert not any(m._forward_hooks for m in student.modules())
        assert set(ckpt) - set(plain) == {"kd"}
        assert ckpt["kd"]["teacher"] == str(teacher_pt) and len(ckpt["kd"]["teacher_sha256"]) == 64
        with zipfile.ZipFile(f) as z:  # no class in the pickle needs this plugin to load
            pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        modules = {str(arg).split()[0] for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}
        assert modules and not any(m.startswith("ultralytics_kd") for m in modules), modules
    extra = trainer.last.stat().st_size - plain_run.last.stat().st_size
    adapters = sum(v.numel() * v.element_size() for v in trainer.kd_connectors.state_dict().values())
    assert extra < adapters + 200_000  # the "kd" key: adapter weights and a few settings (a teacher adds ~20 MB)


def test_zero_weight_distillation_reproduces_scratch(plain_run, data_yaml, teacher_pt, tiny, tmp_path):
    """Same seed, KD weight 0, teacher check on: the very same batches, augmentations and losses as a scratch run."""
    model = YOLO("yolov8n.yaml")
    model.train(
        trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=1, kd_recipe="cls_bce+ld",
        kd_weights=0.0, project=str(tmp_path), name="z", **tiny,
    )  # fmt: skip
    kd, plain = _csv(model.trainer.csv)[0], _csv(plain_run.csv)[0]
    assert model.trainer.kd_teacher_metrics is not None  # the check ran, and left the RNG streams untouched
    for col in ("train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss"):
        assert kd[col] == plain[col], col


def test_student_loads_in_plain_ultralytics(kd_run, data_yaml, tmp_path):
    _, trainer, _ = kd_run
    model = YOLO(trainer.best)
    boxes = model.predict(torch.zeros(1, 3, 64, 64), conf=0.0, max_det=5, verbose=False, save=False)[0].boxes
    assert boxes.data.shape == (5, 6)  # conf=0 keeps every candidate: max_det of them, as xyxy, conf, cls
    metrics = model.val(
        data=str(data_yaml), imgsz=64, batch=4, plots=False, device="cpu", verbose=False, project=str(tmp_path)
    )
    keys = ["metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)"]
    # the figures of the trainer's own final validation of best.pt, now through plain Ultralytics
    assert [metrics.results_dict[k] for k in keys] == pytest.approx([trainer.metrics[k] for k in keys])


class _Stop(Exception):
    pass


def _train_until_first_save(model, name, tmp_path, **train_args):
    """Train with KDTrainer until the first checkpoint is written (end of epoch 1), as an interrupted run; return it."""

    def stop_after_first_save(trainer):
        raise _Stop

    model.add_callback("on_model_save", stop_after_first_save)
    with pytest.raises(_Stop):
        model.train(trainer=KDTrainer, project=str(tmp_path), name=name, **train_args)
    return tmp_path / name / "weights" / "last.pt"


@pytest.mark.parametrize("student", ["yolov8n.yaml", "yolo26n.yaml"])
def test_resume_continues_with_same_teacher_and_settings(student, data_yaml, teacher_pt, tiny, tmp_path):
    settings = dict(kd_recipe="cls_bce+cwd", kd_T=3.0, kd_weights=[1.0, 0.5], kd_teacher_check=False)
    last = _train_until_first_save(
        YOLO(student), "r", tmp_path, teacher=str(teacher_pt), data=str(data_yaml), epochs=2, **settings, **tiny
    )
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0 and saved["kd"]["settings"]["kd_recipe"] == "cls_bce+cwd"

    seen = {}

    def capture(trainer):
        seen["connectors"] = {k: v.clone().cpu() for k, v in trainer.kd_connectors.state_dict().items()}

    resumed = YOLO(last)
    resumed.add_callback("on_pretrain_routine_end", capture)
    resumed.train(trainer=KDTrainer, resume=True)
    trainer = resumed.trainer
    assert trainer.start_epoch == 1 and trainer.args.teacher == str(teacher_pt)
    assert {k: kd_args(trainer.args)[k] for k in settings} == settings
    assert [t.name for t in trainer.kd_terms] == ["cls_bce", "cwd"] and trainer.kd_terms[0].tau == 3.0
    assert all(torch.equal(seen["connectors"][k], v) for k, v in saved["kd"]["connectors"].items())
    assert len(_csv(trainer.csv)) == 2 and float(_csv(trainer.csv)[-1]["train/kdcwd_loss"]) > 0
    if "26" in student:  # end-to-end: the o2m/o2o weight schedule resumed where it stopped
        assert trainer.model.criterion.updates == 2


def test_every_resume_path_continues_or_refuses(data_yaml, teacher_pt, tiny, tmp_path, untrained):
    """Stock resume refuses with the command that continues; a moved teacher is given again, a different one is
    refused with both hashes and nothing overwritten; ``yolo-kd train resume`` alone continues the latest run."""
    import shutil

    from ultralytics_kd import cli
    from ultralytics_kd.distill.teacher import file_sha256

    first = shutil.copy(teacher_pt, tmp_path / "first.pt")
    last = _train_until_first_save(
        YOLO("yolov8n.yaml"), "r", tmp_path, teacher=first, data=str(data_yaml), epochs=2, kd_recipe="cls_bce+cwd",
        kd_teacher_check=False, **tiny,
    )  # fmt: skip
    saved = last.read_bytes()
    with pytest.raises(RuntimeError, match=rf"(?s)distillation checkpoint.*yolo-kd train resume model={last}"):
        YOLO(last).train(resume=True)  # the stock trainer, with the plugin imported
    moved = Path(shutil.move(first, tmp_path / "moved.pt"))
    with pytest.raises(FileNotFoundError, match="teacher file .*first.pt' not found.*teacher=new/path"):
        YOLO(last).train(resume=True, trainer=KDTrainer)
    other = untrained("yolov8s.yaml", tmp_path / "other.pt")
    hashes = rf"sha256 {file_sha256(other)[:16]}.*sha256 {file_sha256(moved)[:16]}"
    with pytest.raises(ValueError, match=rf"other.pt' \({hashes}"):
        YOLO(last).train(resume=True, trainer=KDTrainer, teacher=str(other))
    assert last.read_bytes() == saved
    cli.entrypoint(["train", "resume", f"teacher={moved}"])  # the latest run under the working folder: this one
    rows = _csv(last.parents[1] / "results.csv")
    assert len(rows) == 2 and float(rows[-1]["train/kdcwd_loss"]) > 0
    assert torch.load(last, map_location="cpu", weights_only=False)["kd"]["teacher"] == str(moved)


def test_ddp_args_round_trip(data_yaml, teacher_pt, tiny, tmp_path):
    """DDP workers rebuild the trainer from vars(trainer.args) over DEFAULT_CFG_DICT; the KD settings must survive."""
    first = KDTrainer(
        overrides=dict(
            model="yolov8n.yaml", data=str(data_yaml), teacher=str(teacher_pt), kd_recipe="cls_kl+cwd", kd_T=3.0,
            kd_weights=[1.0, 0.5], kd_warmup=1.5, project=str(tmp_path), name="ddp", **tiny,
        )
    )  # fmt: skip
    state = pickle.loads(pickle.dumps(vars(first.args)))  # generate_ddp_file pickles this dict
    second = KDTrainer(cfg={**DEFAULT_CFG_DICT, "save_dir": ""}, overrides=state)
    assert kd_args(second.args) == kd_args(first.args)
    assert second.args.teacher == str(teacher_pt) and second.kd_teacher_sha256 == first.kd_teacher_sha256
    assert second.save_dir == first.save_dir


def test_python_cfg_file_reaches_the_trainer(data_yaml, teacher_pt, tmp_path):
    """YOLO(...).train(trainer=KDTrainer, cfg=my_kd.yaml): Ultralytics loads the file, KDTrainer accepts its keys."""
    from ultralytics.utils import YAML

    from ultralytics_kd.distill.settings import KD_CFG_PATH

    cfg = {**YAML.load(KD_CFG_PATH), "teacher": str(teacher_pt), "kd_recipe": "seed", "kd_T": 5.0}
    YAML.save(tmp_path / "my_kd.yaml", cfg)
    seen = {}

    def stop(trainer):  # runs inside the trainer's __init__, after the config check, before any dataset work
        seen.update(vars(trainer.args))
        raise _Stop

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_pretrain_routine_start", stop)
    with pytest.raises(_Stop):
        model.train(trainer=KDTrainer, cfg=str(tmp_path / "my_kd.yaml"), data=str(data_yaml), project=str(tmp_path))
    assert (seen["teacher"], seen["kd_recipe"], seen["kd_T"]) == (str(teacher_pt), "seed", 5.0)


def test_yaml_teacher_with_weights(data_yaml, teacher_pt, tiny, tmp_path):
    trainer = KDTrainer(
        overrides=dict(
            model="yolov8n.yaml", data=str(data_yaml), teacher="yolov8s.yaml", kd_teacher_weights=str(teacher_pt),
            project=str(tmp_path), name="y", **tiny,
        )
    )  # fmt: skip
    reference = YOLO(teacher_pt).model.float().fuse(verbose=False).state_dict()  # the teacher runs fused
    assert all(torch.equal(v.cpu(), reference[k]) for k, v in trainer.teacher.model.state_dict().items())


def test_custom_feature_layers_and_cross_family(data_yaml, teacher_pt, tiny, tmp_path):
    """yolov9t student, yolov8s teacher, backbone layers paired explicitly: hooks never outlive a batch."""
    model = YOLO("yolov9t.yaml")
    model.train(
        trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=1, kd_recipe="cwd+cls_bce",
        kd_feat_layers=[4, 6, 8], kd_teacher_feat_layers=[4, 6, 9], kd_teacher_check=False, project=str(tmp_path),
        name="c", **tiny,
    )  # fmt: skip
    trainer = model.trainer
    assert float(_csv(trainer.csv)[0]["train/kdcwd_loss"]) > 0
    assert not any(m._forward_hooks for m in trainer.model.modules())
    assert not any(m._forward_hooks for m in trainer.teacher.modules())


def test_end2end_teacher_uses_one2many_and_drops_ld(data_yaml, tiny, tmp_path, untrained):
    """A YOLO26 (end-to-end, reg_max=1) teacher: its one2many branch is distilled; LD cannot run and is dropped."""
    teacher = untrained("yolo26n.yaml", tmp_path / "y26.pt")
    handler = _Capture()
    LOGGER.addHandler(handler)
    try:
        model = YOLO("yolov8n.yaml")
        model.train(
            trainer=KDTrainer, teacher=str(teacher), data=str(data_yaml), epochs=1, kd_recipe="cls_bce+ld+cwd",
            kd_teacher_check=False, project=str(tmp_path), name="e", **tiny,
        )  # fmt: skip
    finally:
        LOGGER.removeHandler(handler)
    assert [t.name for t in model.trainer.kd_terms] == ["cls_bce", "cwd"]
    assert any("LD compares DFL bins" in m and "switched off" in m for m in handler.messages)
    assert float(_csv(model.trainer.csv)[0]["train/kdcls_loss"]) > 0


def test_kd_off_last_stops_distilling_in_close_mosaic_epochs(data_yaml, teacher_pt, tiny, tmp_path):
    """kd_off_last: the last close_mosaic epochs train on labels alone (KD columns 0, teacher not run)."""
    calls = []

    class CountingTrainer(KDTrainer):
        def preprocess_batch(self, batch):
            batch = super().preprocess_batch(batch)
            calls.append((self.epoch, batch["kd"].teacher is not None, batch["kd"].scale))
            return batch

    model = YOLO("yolov8n.yaml")
    model.train(
        trainer=CountingTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=2, close_mosaic=1,
        kd_recipe="lad+ld+cwd", kd_off_last=True, kd_warmup=1.0, kd_teacher_check=False, project=str(tmp_path),
        name="o", **tiny,
    )  # fmt: skip
    rows = _csv(model.trainer.csv)
    assert float(rows[0]["train/kdld_loss"]) > 0 and float(rows[1]["train/kdld_loss"]) == 0.0
    assert [c for c in calls if c[0] == 1] == [(1, False, 0.0)] * 2  # epoch 2: no teacher forward at all
    assert [c[2] for c in calls if c[0] == 0] == [0.0, 0.5]  # warm-up over the first epoch (2 batches)


def test_end2end_student(data_yaml, teacher_pt, tiny, tmp_path):
    """A YOLO26 student: stock one2many + one2one loss, KD on its one2many branch; LD needs reg_max > 1."""
    model = YOLO("yolo26n.yaml")
    model.train(
        trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=2, kd_recipe="cls_bce+ld+cwd",
        kd_teacher_check=False, project=str(tmp_path), name="e2e", **tiny,
    )  # fmt: skip
    trainer = model.trainer
    assert type(trainer.model.criterion).__name__ == "KDE2ELoss"
    assert [t.name for t in trainer.kd_terms] == ["cls_bce", "cwd"]
    rows = _csv(trainer.csv)
    assert all(float(r["train/kdcls_loss"]) > 0 and float(r["train/kdcwd_loss"]) > 0 for r in rows)
    assert trainer.model.criterion.updates == 2  # the trainer's per-epoch o2m/o2o schedule reached our criterion


# bad input: every error is raised before the first batch ------------------------------------------------------------
def _no_batches(trainer):
    raise AssertionError("training reached a batch")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"teacher": "missing.pt"}, FileNotFoundError, "teacher='missing.pt' not found"),
        ({"teacher": None}, ValueError, "needs a teacher"),
        ({"kd_T": 0}, ValueError, "kd_T=0.0 must be > 0"),
        ({"kd_alpha": 2}, ValueError, r"kd_alpha=2.0 must be in \[0, 1\]"),
        ({"kd_recipe": "cls_bce+focal"}, ValueError, "unknown term"),
        ({"kd_weights": [1, -1]}, ValueError, "negative weight"),
        ({"kd_tmp": 2}, SyntaxError, "'kd_tmp' is not a valid YOLO argument"),
        ({"compile": True, "kd_feat_layers": [4, 6, 9]}, ValueError, "compile=True is not supported"),
        ({"teacher": "yolov8s.yaml"}, ValueError, "also pass kd_teacher_weights"),
        ({"kd_init": "copy"}, ValueError, "kd_init='copy' must be one of"),
        ({"kd_mimic_epochs": 0}, ValueError, "kd_mimic_epochs=0.0 must be > 0"),
        ({"kd_teacher_weights": "other.pt"}, ValueError, "is a checkpoint, which carries its own weights"),
        ({"kd_off_last": True}, ValueError, "close_mosaic=10 epochs, which is every epoch of this 1-epoch run"),
    ],
)
def test_bad_settings_fail_before_anything_runs(kwargs, error, match, data_yaml, teacher_pt, tiny, tmp_path):
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_batch_start", _no_batches)
    args = dict(teacher=str(teacher_pt), data=str(data_yaml), epochs=1, project=str(tmp_path), name="bad", **tiny)
    with pytest.raises(error, match=match):
        model.train(trainer=KDTrainer, **{**args, **kwargs})
    assert not (tmp_path / "bad").exists()  # no run folder is left behind


def test_a_file_that_is_no_checkpoint_names_our_fix_first(data_yaml, tiny, tmp_path):
    """Our cause and fix lead the message, with no stock advice to download a model; an existing run folder of the
    same name (exist_ok=True) keeps what it had, a new one is removed."""
    bad = tmp_path / "teacher.pt"
    bad.write_text("not a checkpoint")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("the user's")
    for name, exist_ok in (("new", False), ("kept", True)):
        with pytest.raises(ValueError) as e:
            YOLO("yolov8n.yaml").train(
                trainer=KDTrainer, teacher=str(bad), data=str(data_yaml), epochs=1, project=str(tmp_path), name=name,
                exist_ok=exist_ok, **tiny,
            )  # fmt: skip
        assert str(e.value).startswith(f"teacher '{bad}' is not an Ultralytics checkpoint")
        assert "download" not in str(e.value) and "yolo26n" not in str(e.value)
    assert not (tmp_path / "new").exists() and (tmp_path / "kept" / "notes.txt").read_text() == "the user's"


@pytest.mark.parametrize(
    "teacher_cfg, student_cfg, nc, names, match",
    [
        ("yolov8n-cls.yaml", "yolov8n.yaml", None, None, "is a classify model"),
        ("yolov8n-seg.yaml", "yolov8n.yaml", None, None, "is a segment model"),
        ("yolov8n.yaml", "yolov8n.yaml", 3, None, "teacher classes"),
        ("yolov8n.yaml", "yolov8n.yaml", None, ("a", "b"), "teacher classes"),
        ("yolov8n-p2.yaml", "yolov8n.yaml", None, None, "detection levels"),
        ("yolov8n-p2.yaml", "yolov8n-p6.yaml", None, None, "strides"),
    ],
)
def test_incompatible_teacher_fails_before_training(
    teacher_cfg, student_cfg, nc, names, match, data_yaml, tiny, tmp_path, untrained
):
    kw = {"names": names} if names else {}
    teacher = untrained(teacher_cfg, tmp_path / "t.pt", nc=nc, **kw)
    model = YOLO(student_cfg)
    model.add_callback("on_train_batch_start", _no_batches)
    with pytest.raises((ValueError, NotImplementedError), match=match):
        model.train(
            trainer=KDTrainer, teacher=str(teacher), data=str(data_yaml), epochs=1, project=str(tmp_path), name="x",
            **tiny,
        )  # fmt: skip
    assert not (tmp_path / "x").exists()  # no run folder is left behind


@pytest.mark.skipif(
    not __import__("os").environ.get("KD_TEST_COMPILE"), reason="torch.compile on CPU takes ~4 min; KD_TEST_COMPILE=1"
)
def test_compile_true_distills(data_yaml, teacher_pt, tiny, tmp_path):
    """compile=True: the student is compiled, the teacher and the KD criterion run eagerly beside it."""
    model = YOLO("yolov8n.yaml")
    model.train(
        trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=1, kd_recipe="cls_bce+ld+cwd",
        compile=True, kd_teacher_check=False, project=str(tmp_path), name="compiled", **tiny,
    )  # fmt: skip
    assert type(model.trainer.model).__name__ == "OptimizedModule"
    assert float(_csv(model.trainer.csv)[0]["train/kdcwd_loss"]) > 0


def test_lad_recipe_trains_with_teacher_assignment(data_yaml, teacher_pt, tiny, tmp_path):
    """kd_recipe=lad: no KD column, the criterion assigns from the teacher on every training batch."""
    from ultralytics_kd.distill.criterion import TeacherAssigner

    fed = []

    def spy(trainer):  # record, at every assignment, whether the teacher's predictions were fed in
        assigner = trainer.model.criterion.assigner
        assert isinstance(assigner, TeacherAssigner)
        hook = lambda m, args, kwargs: fed.append(kwargs.get("teacher") is not None)  # noqa: E731
        assigner.register_forward_pre_hook(hook, with_kwargs=True)

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_start", spy)
    model.train(
        trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=1, kd_recipe="lad",
        kd_teacher_check=False, project=str(tmp_path), name="lad", **tiny,
    )  # fmt: skip
    trainer = model.trainer
    assert trainer.kd_lad and trainer.kd_terms == [] and len(fed) == 2 and all(fed)  # 8 images, batch 4
    row = _csv(trainer.csv)[0]
    assert not [k for k in row if "kd" in k] and all(map(math.isfinite, map(float, row.values())))


def test_lad_refuses_end2end_student(data_yaml, teacher_pt, tiny, tmp_path):
    model = YOLO("yolo26n.yaml")
    model.add_callback("on_train_batch_start", _no_batches)
    with pytest.raises(ValueError, match="kd_lad=True assigns"):
        model.train(
            trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=1, kd_lad=True,
            kd_teacher_check=False, project=str(tmp_path), name="x", **tiny,
        )  # fmt: skip


def _until_first_batch(model, **train_args):
    """Run KDTrainer up to the start of the first batch (setup done, no forward yet) and return it."""

    def stop(trainer):
        raise _Stop

    model.add_callback("on_train_batch_start", stop)
    with pytest.raises(_Stop):
        model.train(trainer=KDTrainer, epochs=1, kd_teacher_check=False, **train_args)
    return model.trainer


def test_default_recipe_takes_an_end2end_student(data_yaml, teacher_pt, tiny, tmp_path):
    """The default has no LAD, so a YOLO26 student distills with it as given (LD off: reg_max 1; CWD on)."""
    trainer = _until_first_batch(
        YOLO("yolo26n.yaml"), teacher=str(teacher_pt), data=str(data_yaml), project=str(tmp_path), name="d", **tiny
    )
    assert [t.name for t in trainer.kd_terms] == ["cwd"] and not trainer.kd_lad


class _Info(_Capture):
    def __init__(self):
        super().__init__()
        self.setLevel(logging.INFO)


@pytest.mark.parametrize(
    "settings, terms",
    [
        ({"kd_init": "select"}, ["sl2"]),
        ({"kd_init": "auto"}, ["sl2"]),  # the default recipe's own setting
        ({"kd_weights": 0.5}, ["ld", "cwd"]),  # weights given for the default's own terms keep them
    ],
)
def test_kd_init_starts_the_student_from_the_teacher(settings, terms, data_yaml, teacher_pt, tiny, tmp_path):
    """yolov8n from the yolov8s teacher: before the first batch, every student tensor is the teacher's selection, and
    the default recipe trains the inheriting student with the terms of 'init_sl2'."""
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    from ultralytics_kd.distill.inherit import select_weights

    trainer = _until_first_batch(
        YOLO("yolov8n.yaml"), teacher=str(teacher_pt), data=str(data_yaml), project=str(tmp_path), name="i",
        **settings, **tiny,
    )  # fmt: skip
    assert trainer.kd_start.mode == "select" and [t.name for t in trainer.kd_terms] == terms and not trainer.kd_lad
    seen = trainer.model.state_dict()
    expected = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    select_weights(expected, load_checkpoint(teacher_pt)[0].float())
    for k, v in expected.state_dict().items():
        assert torch.equal(seen[k], v), k


def test_resume_keeps_the_inherited_terms(data_yaml, teacher_pt, tiny, tmp_path):
    """A resumed student loads its own weights (no selection), yet keeps the terms it started with after inheriting."""
    last = _train_until_first_save(
        YOLO("yolov8n.yaml"), "r", tmp_path, teacher=str(teacher_pt), data=str(data_yaml), epochs=2,
        kd_teacher_check=False, **tiny,
    )  # fmt: skip
    assert torch.load(last, map_location="cpu", weights_only=False)["kd"]["inherited"] is True
    resumed = YOLO(last)
    resumed.train(trainer=KDTrainer, resume=True)
    trainer = resumed.trainer
    assert (
        trainer.start_epoch == 1 and trainer.kd_start.mode == "select" and [t.name for t in trainer.kd_terms] == ["sl2"]
    )
    assert float(_csv(trainer.csv)[-1]["train/kdsl2_loss"]) > 0


def test_kd_init_across_families(data_yaml, teacher_pt, tiny, tmp_path):
    """A yolov9t student has no yolov8s layout to inherit: 'select' refuses before training, 'auto' logs and skips."""
    args = dict(trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), epochs=1, kd_teacher_check=False,
                project=str(tmp_path), **tiny)  # fmt: skip
    model = YOLO("yolov9t.yaml")
    model.add_callback("on_train_batch_start", _no_batches)
    with pytest.raises(ValueError, match="kd_init=select copies the teacher's weights"):
        model.train(kd_init="select", name="s", **args)
    handler = _Info()
    LOGGER.addHandler(handler)
    try:
        model = YOLO("yolov9t.yaml")
        model.train(kd_init="auto", name="a", **args)
    finally:
        LOGGER.removeHandler(handler)
    assert any("keeps its random init" in m for m in handler.messages)
    trainer = model.trainer  # no inheritance: the default recipe's own terms, without LAD
    assert (
        trainer.kd_start.mode != "select" and [t.name for t in trainer.kd_terms] == ["ld", "cwd"] and not trainer.kd_lad
    )
    assert model.trainer.best.exists()


class MimicSpy(KDTrainer):
    """Records head and backbone gradients per optimizer step, and the student around the head transplant."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grads, self.transplant = [], {}

    def optimizer_step(self):
        head = self.model.model[-1]
        backbone = self.model.model[0]
        self.grads.append(
            (self.epoch, sum(float(p.grad.abs().sum()) for p in head.parameters() if p.grad is not None),
             sum(float(p.grad.abs().sum()) for p in backbone.parameters() if p.grad is not None))
        )  # fmt: skip
        super().optimizer_step()

    def _kd_transplant(self):
        from copy import deepcopy

        from ultralytics.nn.tasks import load_checkpoint

        from ultralytics_kd.distill.transplant import transplant_head

        term = self.kd_terms[0]
        expected = deepcopy(self.model.model[-1])
        adapters = deepcopy(self.kd_connectors["mimic"]).eval()
        teacher_head = load_checkpoint(self.args.teacher)[0].float().model[-1]
        transplant_head(expected, teacher_head, adapters, term.mean, term.std)
        super()._kd_transplant()
        self.transplant = {
            "epoch": self.epoch,
            "expected": expected.state_dict(),
            "head": {k: v.clone() for k, v in self.model.model[-1].state_dict().items()},
            "ema": {k: v.clone() for k, v in self.ema.ema.state_dict().items()},
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer_state": len(self.optimizer.state),
        }


def test_mimic_stage_then_head_transplant(data_yaml, teacher_pt, tiny, tmp_path):
    """A ShuffleV2 student under a yolov8s teacher (nothing to select): with the default recipe, epoch 1 trains only
    its features to imitate the teacher's (head gradients 0, detection loss off), then the student takes the teacher's
    head through the adapters and trains on the stock loss (no terms, no teacher forward)."""
    model = YOLO(SHUFFLE)
    model.train(
        trainer=MimicSpy, teacher=str(teacher_pt), data=str(data_yaml), epochs=2, kd_teacher_check=False,
        project=str(tmp_path), name="m", **tiny,
    )  # fmt: skip
    trainer = model.trainer
    assert (
        trainer.kd_stage is not None
        and trainer.kd_stage.epochs == 1
        and [t.name for t in trainer.kd_terms] == ["mimic"]
    )
    rows = _csv(trainer.csv)
    assert float(rows[0]["train/kdmim_loss"]) > 0 and float(rows[1]["train/kdmim_loss"]) == 0
    mimic_steps = [g for g in trainer.grads if g[0] == 0]
    assert mimic_steps and all(head == 0 and backbone > 0 for _, head, backbone in mimic_steps)
    assert all(head > 0 for e, head, _ in trainer.grads if e == 1)
    t = trainer.transplant
    assert t["epoch"] == 1 and t["optimizer_state"] == 0
    for k, v in t["expected"].items():
        torch.testing.assert_close(t["head"][k], v)
    assert all(torch.equal(v, t["model"][k]) for k, v in t["ema"].items())
    kd = torch.load(trainer.last, map_location="cpu", weights_only=False)["kd"]
    assert kd["mimic"] and kd["transplanted"] and len(kd["mimic_stats"]["mean"]) == 3
    # each stage has a schedule of its own: epoch 2 (a stage too short to warm up) restarts at lr0, not at lf(1)
    group = trainer.optimizer.param_groups[0]
    assert trainer.lf(1) == 1.0 and group["lr"] == pytest.approx(group["initial_lr"])


class GraftSpy(KDTrainer):
    """Records per step the gradients of the grafted layers and of the backbone, and the student at the graft."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grads, self.graft = [], {}

    def optimizer_step(self):
        start = self.kd_stage.graft.start

        def grad(layers):
            return sum(float(p.grad.abs().sum()) for m in layers for p in m.parameters() if p.grad is not None)

        self.grads.append((self.epoch, grad(self.model.model[start:]), grad(self.model.model[:start])))
        super().optimizer_step()

    def _kd_transplant(self):
        backbone = {k: v.clone() for k, v in self.model.state_dict().items() if int(k.split(".")[1]) < 8}
        super()._kd_transplant()
        self.graft = {
            "epoch": self.epoch,
            "backbone": backbone,
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "ema": {k: v.clone() for k, v in self.ema.ema.state_dict().items()},
            "optimizer_state": len(self.optimizer.state),
        }


def test_graft_stage_then_the_teachers_neck_and_head(data_yaml, tiny, tmp_path, untrained):
    """The ShuffleV2 student with YOLOv9-t's neck and head under a YOLOv9-s teacher: with the default recipe, epoch 1
    trains only its backbone to reproduce the teacher's backbone outputs (no gradient reaches layers 8-20), then those
    layers take a uniform selection of the teacher's 10-22, the backbone is kept, and training goes on without terms."""
    from ultralytics.nn.tasks import load_checkpoint

    from ultralytics_kd.distill.inherit import uniform_index

    teacher = untrained("yolov9s.yaml", tmp_path / "v9s.pt")
    model = YOLO(ELAN)
    model.train(
        trainer=GraftSpy, teacher=str(teacher), data=str(data_yaml), epochs=2, kd_teacher_check=False,
        project=str(tmp_path), name="g", **tiny,
    )  # fmt: skip
    trainer = model.trainer
    assert trainer.kd_start.mode == "graft" and [t.name for t in trainer.kd_terms] == ["graft"]
    rows = _csv(trainer.csv)
    assert float(rows[0]["train/kdgraft_loss"]) > 0 and float(rows[1]["train/kdgraft_loss"]) == 0
    stage = [g for g in trainer.grads if g[0] == 0]
    assert stage and all(grafted == 0 and backbone > 0 for _, grafted, backbone in stage)
    assert all(grafted > 0 for e, grafted, _ in trainer.grads if e == 1)
    g = trainer.graft
    assert g["epoch"] == 1 and g["optimizer_state"] == 0
    ts = load_checkpoint(str(teacher))[0].float().state_dict()
    for k, v in g["model"].items():
        j = int(k.split(".")[1])
        if j < 8:
            assert torch.equal(v, g["backbone"][k]), k
            continue
        expected = ts[".".join(["model", str(j + 2), *k.split(".")[2:]])]
        for d, n in enumerate(v.shape):
            expected = expected.index_select(d, uniform_index(n, expected.shape[d]))
        torch.testing.assert_close(v, expected.to(v.dtype), msg=k)
    assert all(torch.equal(v, g["model"][k]) for k, v in g["ema"].items())
    kd = torch.load(trainer.last, map_location="cpu", weights_only=False)["kd"]
    assert kd["graft"] and kd["mimic"] and kd["transplanted"]


def test_kd_init_mimic_refuses_what_it_cannot_do(data_yaml, teacher_pt, tiny, tmp_path):
    """Explicit kd_init=mimic fails before training for an end-to-end head and for a run too short for the stage."""
    args = dict(trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), kd_teacher_check=False,
                kd_init="mimic", project=str(tmp_path), **tiny)  # fmt: skip
    model = YOLO("yolo26n.yaml")
    model.add_callback("on_train_batch_start", _no_batches)
    with pytest.raises(ValueError, match="kd_init=mimic .* end-to-end"):
        model.train(epochs=2, name="e", **args)
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_batch_start", _no_batches)
    with pytest.raises(ValueError, match="leaving none to train the detector"):
        model.train(epochs=2, kd_mimic_epochs=2, name="s", **args)


def test_resume_inside_the_mimic_stage(data_yaml, teacher_pt, tiny, tmp_path):
    """Stopped after epoch 1 of a 2-epoch mimic stage, a resumed run restores the adapters and the teacher statistics,
    finishes the stage and then takes the head."""
    last = _train_until_first_save(
        YOLO(SHUFFLE), "r", tmp_path, teacher=str(teacher_pt), data=str(data_yaml), epochs=3, kd_mimic_epochs=2,
        kd_teacher_check=False, **tiny,
    )  # fmt: skip
    saved = torch.load(last, map_location="cpu", weights_only=False)["kd"]
    assert saved["mimic"] and not saved["transplanted"] and len(saved["mimic_stats"]["std"]) == 3
    resumed = YOLO(last)
    seen = {}

    def at_start(trainer):
        term = trainer.kd_terms[0]
        seen["std"] = [s.clone() for s in term.std]
        seen["adapters"] = {k: v.clone() for k, v in trainer.kd_connectors.state_dict().items()}

    resumed.add_callback("on_train_start", at_start)
    resumed.train(trainer=KDTrainer, resume=True)
    trainer = resumed.trainer
    assert trainer.start_epoch == 1 and trainer.kd_stage is not None and trainer.kd_stage.transplanted
    assert len(seen["std"]) == 3 and all(torch.equal(a, b) for a, b in zip(seen["std"], saved["mimic_stats"]["std"]))
    assert all(torch.equal(v, saved["connectors"][k]) for k, v in seen["adapters"].items())
    rows = _csv(trainer.csv)
    assert [float(r["train/kdmim_loss"]) > 0 for r in rows] == [True, True, False]


def test_resume_inside_the_graft_stage(data_yaml, tiny, tmp_path, untrained):
    """Stopped after epoch 1 of a 2-epoch graft stage, a resumed run plans the same graft again from the checkpoint,
    finishes the stage and then grafts the teacher's neck and head."""
    teacher = untrained("yolov9s.yaml", tmp_path / "v9s.pt")
    last = _train_until_first_save(
        YOLO(ELAN), "r", tmp_path, teacher=str(teacher), data=str(data_yaml), epochs=3, kd_mimic_epochs=2,
        kd_teacher_check=False, **tiny,
    )  # fmt: skip
    saved = torch.load(last, map_location="cpu", weights_only=False)["kd"]
    assert saved["graft"] and not saved["transplanted"]
    resumed = YOLO(last)
    resumed.train(trainer=KDTrainer, resume=True)
    trainer = resumed.trainer
    assert trainer.start_epoch == 1 and trainer.kd_start.mode == "graft" and trainer.kd_stage.transplanted
    assert trainer.kd_stage.graft.entries == ((5, 4), (6, 6), (7, 9))
    rows = _csv(trainer.csv)
    assert [float(r["train/kdgraft_loss"]) > 0 for r in rows] == [True, True, False]


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="GPUs 0 and 1 exist here")
def test_missing_gpus_give_the_stock_error(data_yaml, teacher_pt, tiny, tmp_path):
    """device= naming GPUs that are not there fails in the stock device check, before the teacher is loaded."""
    args = {**tiny, "device": "0,1"}
    with pytest.raises(ValueError, match=r"Invalid CUDA 'device=0,1' requested"):
        KDTrainer(overrides=dict(model="yolov8n.yaml", teacher=str(teacher_pt), data=str(data_yaml), **args))
