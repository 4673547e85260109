"""KDTrainer: Ultralytics' DetectionTrainer plus a frozen teacher and a distillation criterion.

Every change is a short override of a trainer hook; the training loop, EMA, validation, checkpointing, close_mosaic,
AMP and DDP are Ultralytics' own:

- ``__init__``: accepts ``teacher`` and the ``kd_*`` keys (defaults in ``cfg/kd.yaml``) as ordinary train arguments by
  adding them to the base config the stock key check compares against, so typos in any key are still rejected and the
  settings live in ``self.args`` (hence in ``vars(args)`` for DDP, ``args.yaml`` and the checkpoint's ``train_args``
  that ``resume`` restores). Loads and checks the teacher against the dataset; on resume the teacher may be given again
  (a moved file), and must hash as the checkpoint's did.
- ``get_model``: a student built without weights starts as ``distill.start.choose_start`` decides (``kd_init``): from a
  selection of the teacher's weights, or with a ``MimicStage`` (``distill/stage.py``) that ends by giving it the
  teacher's head. ``setup_model`` reads a resumed run's start from its checkpoint.
- ``set_model_attributes``: checks teacher/student compatibility, builds the terms and the feature adapters.
- ``build_optimizer``: adds the adapters as one more parameter group.
- ``_setup_scheduler``, ``_get_warmup_iterations``: with a mimic stage, the stage and the rest of the run each get the
  stock schedule and warm-up of their own length (``MimicStage.lr_factor``, ``MimicStage.warm_up``).
- ``_model_train``: under QAT (``quantize=8``) BatchNorm statistics stay frozen.
- ``_setup_train``: moves the teacher to the device (under DDP, the rank's), installs ``KDDetectionLoss``
  (``KDE2ELoss`` for end-to-end students) on the student, after the EMA copy (so neither the EMA nor its checkpoints
  carry it), then validates the teacher once. Under DDP every rank starts from rank 0's adapters.
- ``on_train_epoch_start``, ``on_train_batch_start`` callbacks: count the batches the KD schedule reads; a mimic stage
  warms up each part and hands over the teacher's head at the first batch after it.
- ``preprocess_batch``: runs the teacher under ``no_grad`` and passes its outputs to the criterion in ``batch["kd"]``.
- ``save_model``: adds a ``"kd"`` key (teacher path and hash, settings, adapter weights, the stage) to the checkpoints.

Examples:
    >>> from ultralytics import YOLO
    >>> from ultralytics_kd import KDTrainer
    >>> YOLO("yolov9t.yaml").train(trainer=KDTrainer, teacher="teacher.pt", data="data.yaml", epochs=100)
"""

from __future__ import annotations

import io
from contextlib import contextmanager, nullcontext
from copy import copy
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from ultralytics.cfg import cfg2dict
from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_kd.deploy.int8 import is_int8
from ultralytics_kd.distill.connectors import build_connectors
from ultralytics_kd.distill.criterion import KDBatch, KDDetectionLoss, KDE2ELoss
from ultralytics_kd.distill.recipes import Recipe, get_recipe
from ultralytics_kd.distill.recorders import FeatureRecorder
from ultralytics_kd.distill.schedule import kd_scale
from ultralytics_kd.distill.settings import KD_DEFAULTS, check_kd_args, kd_args
from ultralytics_kd.distill.stage import NO_STAGE_STATE, MimicStage, mimic_epochs
from ultralytics_kd.distill.start import Start, TeacherParts, choose_start
from ultralytics_kd.distill.teacher import FrozenTeacher, check_pair, file_sha256, load_teacher
from ultralytics_kd.engine.resume import kd_checkpoint_state

__all__ = ["KDTrainer"]

PREFIX = colorstr("KD:")
TEACHER_KEYS = ("teacher", "kd_teacher_weights")


@contextmanager
def _stock_args(args):
    """Hide the ``teacher``/``kd_*`` attributes of ``args`` for a block that re-checks them against stock keys.

    Validators rebuild their config from a copy of the trainer's args with the strict stock key check; they need no
    distillation settings, so they get none, and the trainer's args keep them.
    """
    saved = {k: args.__dict__.pop(k) for k in KD_DEFAULTS if k in args.__dict__}
    try:
        yield args
    finally:
        args.__dict__.update(saved)


def _check_before_setup(given: dict[str, Any]) -> None:
    """Checks that need no dataset or model, run before the stock trainer creates directories or loads anything."""
    check_kd_args(given)
    if given.get("resume"):
        return  # the teacher and settings come from the checkpoint; they are checked once it is read
    if not given.get("teacher"):
        raise ValueError("KDTrainer needs a teacher: pass teacher=path/to/teacher.pt (a trained detection model)")
    if is_int8(given.get("quantize")) and not _own_data(given.get("data")):
        raise ValueError(
            "quantize=8 (QAT) calibrates its INT8 ranges on your training images: pass data=your_data.yaml. Without "
            "it Ultralytics falls back to a sample set it would download, which this plugin does not allow"
        )
    if given.get("compile") and given.get("kd_feat_layers"):
        raise ValueError(
            "compile=True is not supported with kd_feat_layers: hooks on the student's layers break the compiled "
            "graph. Drop kd_feat_layers (the Detect inputs are distilled without hooks) or set compile=False"
        )
    for key in ("teacher", "kd_teacher_weights"):
        p = given.get(key)
        if p and Path(p).suffix not in {".yaml", ".yml"} and not Path(p).is_file():  # YAML names resolve later
            raise FileNotFoundError(f"{key}='{p}' not found; pass an existing file, e.g. {key}=best.pt")


def _own_data(data) -> bool:
    """A ``data=`` the user chose: set, and not Ultralytics' fallback sample set unless that exists locally."""
    from ultralytics.cfg import TASK2DATA

    return bool(data) and (str(data) != TASK2DATA["detect"] or Path(str(data)).is_file())


@contextmanager
def _preserved_rng():
    """Restore Python, NumPy and torch RNG states after the block.

    The teacher check runs a validation pass, which draws random numbers; without this a distilled run would see other
    augmentations and batch orders than a scratch run with the same seed, and the comparison would not be like for like.
    """
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class _TeacherValidator(DetectionValidator):
    """The stock validator without callbacks: integrations (W&B, MLflow, ...) log the student's run, not the teacher."""

    def run_callbacks(self, event: str) -> None:
        pass


class KDTrainer(DetectionTrainer):
    """Detection trainer that distils a frozen teacher into the student.

    Args:
        cfg (str | dict | SimpleNamespace): Base configuration, as for ``DetectionTrainer``.
        overrides (dict, optional): Train arguments, including ``teacher`` and any ``kd_*`` key.
        _callbacks (dict, optional): Callbacks.

    Attributes:
        teacher (FrozenTeacher): The frozen teacher; on the CPU until ``_setup_train`` moves it to the training device.
        kd_terms (list[KDTerm]): Active distillation terms.
        kd_connectors (nn.ModuleDict): Trainable adapters per feature term.
        kd_teacher_metrics (dict | None): The teacher's validation metrics from the pre-training check.
        kd_start (Start): How the student started (``kd_init``), and why not otherwise.
        kd_stage (MimicStage | None): The mimic stage, for a student that imitates the teacher's features for
            ``kd_mimic_epochs`` epochs, then takes its head (``kd_init=mimic``, or ``auto`` for another family).
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks: dict | None = None):
        """Validate the distillation settings, set up the stock trainer, then load and check the teacher."""
        base, overrides = {**KD_DEFAULTS, **cfg2dict(cfg)}, dict(overrides or {})
        _check_before_setup({**base, **overrides})
        # the stock resume restores every setting from the checkpoint; a moved teacher file may be given again
        moved = {k: overrides.pop(k) for k in TEACHER_KEYS if overrides.get("resume") and overrides.get(k)}
        super().__init__(base, overrides, _callbacks)
        check_kd_args(vars(self.args))  # a resumed run takes its settings from the checkpoint's train_args
        a = self.args
        if self.resume:
            self._check_resumed_teacher(moved)
        teacher = load_teacher(a.teacher, a.kd_teacher_weights, nc=self.data["nc"], ch=self.data["channels"])
        if not self.resume:
            self.kd_teacher_sha256 = _teacher_sha256(a)
        self._qat_lr_scale = None if self.resume else _qat_fine_tune(a, overrides)
        check_pair(teacher, data=self.data)
        self._kd_init_mode = get_recipe(a.kd_recipe).init if a.kd_init is None else a.kd_init
        self._kd_teacher_parts = TeacherParts.of(teacher, self._kd_init_mode)  # before FrozenTeacher fuses them
        # on CPU until _setup_train: a DDP worker's device (cuda:LOCAL_RANK) is only set by _setup_ddp, and the
        # launching process never trains, so a copy on self.device here would sit on cuda:0 in every process
        self.teacher = FrozenTeacher(teacher)
        self.kd_terms, self.kd_connectors = [], nn.ModuleDict()
        self.kd_teacher_metrics = None
        self._kd_resume, self._kd_batch = None, 0
        self.kd_start, self.kd_stage = Start(init=self._kd_init_mode), None
        self._kd_student_rec = self._kd_teacher_rec = None
        self._kd_entry_recs = (None, None)  # student and teacher recorders of a graft stage's backbone outputs
        for event, callback in _CALLBACKS.items():
            if callback not in self.callbacks[event]:  # DDP workers get the launcher's callbacks with it
                self.add_callback(event, callback)

    def _check_resumed_teacher(self, moved: dict[str, str]) -> None:
        """Resume with the teacher the run started with: the checkpoint's file, or ``moved`` ones of the same hash."""
        ckpt = self.args.resume
        state = kd_checkpoint_state(ckpt)
        if state is None:
            raise ValueError(
                f"'{ckpt}' was not written by KDTrainer, so there is no distillation to resume. Resume it as it was "
                f"trained (yolo train resume model={ckpt}), or distil from it in a new run (yolo-kd train model={ckpt} "
                f"teacher=path/to/teacher.pt)"
            )
        vars(self.args).update(moved)
        self.kd_teacher_sha256 = _teacher_sha256(self.args)
        stored = state.get("teacher_sha256")
        if stored and stored != self.kd_teacher_sha256:
            raise ValueError(
                f"teacher '{self.args.kd_teacher_weights or self.args.teacher}' (sha256 {self.kd_teacher_sha256[:16]}) "
                f"is not the teacher '{state.get('teacher_weights') or state.get('teacher')}' this run started with "
                f"(sha256 {stored[:16]}); resuming with it would change the distillation half-way. Pass the original "
                f"file with teacher=..., or start a new run"
            )

    # setup ------------------------------------------------------------------------------------------------------------
    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """Build the student as usual; one built without weights may start from the teacher (``kd_init``)."""
        model = super().get_model(cfg, weights, verbose)
        if not self.resume:  # a resumed student loads its own weights; setup_model reads its start from the checkpoint
            self.kd_start = choose_start(
                self._kd_init_mode,
                model,
                self._kd_teacher_parts,
                has_weights=weights is not None,
                kd_mimic_epochs=self.args.kd_mimic_epochs,
                epochs=self.epochs,
            )
            self.kd_stage = self.kd_start.take(model, self._kd_teacher_parts)
            model.kd_start = self.kd_start  # DDP workers get this model pickled, and never call get_model
        return model

    def setup_model(self):
        """Load the student as usual; on resume also keep the checkpoint's distillation state."""
        ckpt = super().setup_model()
        self._kd_resume = (ckpt or {}).get("kd") if self.resume else None
        if self._kd_resume:  # the student loads its own weights now; how it started is in the checkpoint
            self._qat_lr_scale = self._kd_resume.get("qat_lr_scale")
            n = mimic_epochs(self.args.kd_mimic_epochs, self.epochs)
            parts = self._kd_teacher_parts
            self.kd_start = Start.resumed(self._kd_resume, self._kd_init_mode, self.model, parts, n)
            self.kd_stage = parts.stage(self.kd_start)
            if self.kd_stage:
                self.kd_stage.load_state_dict(self._kd_resume, self.device)
        start = self.model.__dict__.pop("kd_start", None)  # off the student, so that no checkpoint carries it
        if start is not None and start is not self.kd_start:  # a DDP worker: take the launcher's decision
            self.kd_start = start
            self.kd_stage = self._kd_teacher_parts.stage(start)
        return ckpt

    def set_model_attributes(self):
        """Check the teacher against the built student, then build the terms and adapters before the optimizer."""
        super().set_model_attributes()
        student = self.model
        problems = check_pair(self.teacher.model, student)
        a = self.args
        recipe = self._effective_recipe()
        terms, self.kd_alpha, self.kd_conf_weight = recipe.build(
            a.kd_weights,
            a.kd_T,
            a.kd_alpha,
            a.kd_conf_weight,
            options=None if a.kd_cwd_norm is None else {"cwd": {"norm": a.kd_cwd_norm}},
        )
        t_bins, s_bins = self.teacher.model.model[-1].reg_max, student.model[-1].reg_max
        if ("reg_max" in problems or s_bins == 1) and any(t.name == "ld" for t in terms):
            LOGGER.warning(
                f"{PREFIX} teacher reg_max={t_bins}, student reg_max={s_bins}: LD compares DFL bins (it needs the "
                f"same reg_max > 1 on both sides) and is switched off"
            )
            terms = [t for t in terms if t.name != "ld"]
        self.kd_lad = recipe.lad if a.kd_lad is None else bool(a.kd_lad)
        if self.kd_lad and getattr(student.model[-1], "one2one_cv2", None) is not None:
            raise ValueError(
                "kd_lad=True assigns a one-to-many student's targets from the teacher; this student has an end-to-end "
                "(one-to-one) head, whose assignment it does not cover. Set kd_lad=False or use a one-to-many student"
            )
        if self.kd_stage and is_int8(a.quantize):
            raise ValueError(
                "quantize=8 fine-tunes a trained student, and this one would start with a mimic stage (it has no "
                "weights of its own). Distil it in FP32 first, then fine-tune with the teacher: yolo-kd train "
                "model=runs/detect/train/weights/best.pt teacher=... data=... quantize=8 epochs=10"
            )
        if self.kd_stage:  # the imitation term is the whole loss of the stage's epochs
            terms = [self.kd_stage.term, *terms]
        self.kd_terms = terms
        if any(t.source == "feats" for t in terms):
            self._build_feature_side(student, terms)
        if self._kd_resume and self._kd_resume.get("connectors"):
            self.kd_connectors.load_state_dict(self._kd_resume["connectors"])
        if self.kd_stage and self.kd_stage.graft:  # the backbone outputs that the grafted layers read, on both sides
            s_layers, t_layers = zip(*self.kd_stage.graft.entries)
            self._kd_entry_recs = FeatureRecorder(student, s_layers), FeatureRecorder(self.teacher.model, t_layers)
        LOGGER.info(
            f"{PREFIX} teacher {a.teacher}, recipe '{a.kd_recipe}': alpha={self.kd_alpha:g}, terms ["
            + ", ".join(f"{t.name}(w={t.weight:g}, T={t.tau:g})" for t in terms)
            + f"], conf_weight={self.kd_conf_weight}, max_ratio={a.kd_max_ratio:g}, lad={self.kd_lad}, "
            f"init={self._kd_init_mode}" + (f", mimic stage: epochs 1-{self.kd_mimic_epochs}" if self.kd_mimic else "")
        )

    def _effective_recipe(self) -> Recipe:
        """The recipe named by ``kd_recipe``, or the one it names for a student that inherited the teacher's weights.

        A resumed run keeps the terms it started with (``setup_model`` reads ``kd_inherited`` from the checkpoint).
        ``kd_weights`` are given per term of the named recipe, so with them its own terms are kept.
        """
        a, recipe = self.args, get_recipe(self.args.kd_recipe)
        other = recipe.inherited if self.kd_inherited else recipe.mimicked if self.kd_mimic else None
        if not other:
            return recipe
        if a.kd_weights is not None:
            LOGGER.info(f"{PREFIX} kd_recipe={a.kd_recipe} keeps its own terms: kd_weights sets their weights")
            return recipe
        taken = (
            "a selection of the teacher's neck and head"
            if self.kd_mimic and self.kd_stage.graft
            else "the teacher's head"
        )
        how = "inherited the teacher's weights" if self.kd_inherited else f"takes {taken} after the stage"
        LOGGER.info(f"{PREFIX} the student {how}: kd_recipe={a.kd_recipe} trains with the terms of '{other}'")
        return get_recipe(other)

    def _build_feature_side(self, student: nn.Module, terms: list) -> None:
        """Pair student and teacher feature layers, measure their channels with one dummy pass, build adapters."""
        a, tm = self.args, self.teacher.model
        s_layers = list(a.kd_feat_layers or student.model[-1].f)
        t_layers = list(a.kd_teacher_feat_layers or tm.model[-1].f)
        if len(s_layers) != len(t_layers):
            raise ValueError(
                f"{len(s_layers)} student feature layers {s_layers} but {len(t_layers)} teacher layers {t_layers}; "
                f"set kd_feat_layers and kd_teacher_feat_layers to lists of the same length"
            )
        s_rec, t_rec = FeatureRecorder(student, s_layers), FeatureRecorder(tm, t_layers)
        size = int(max(student.stride.max(), tm.stride.max())) * 2
        im = torch.zeros(1, self.data["channels"], size, size, device=self.device)
        was_training = student.training
        student.eval()
        with torch.no_grad(), s_rec, t_rec:
            student(im)
            self.teacher(im)
        student.train(was_training)
        s_feats, t_feats = s_rec.features, t_rec.features
        if bad := [(s.shape[-2:], t.shape[-2:]) for s, t in zip(s_feats, t_feats) if s.shape[-2:] != t.shape[-2:]]:
            raise ValueError(f"paired feature maps differ in resolution {bad}; pair layers with the same stride")
        if a.kd_feat_layers and any(t.name == "sl2" for t in terms) and s_layers != list(student.model[-1].f):
            raise ValueError(
                "sl2 weights locations by the head's scores, so it needs the Detect inputs: unset kd_feat_layers"
            )
        if (a.kd_feat_layers or a.kd_teacher_feat_layers) and any(t.name == "crosskd" for t in terms):
            raise ValueError(
                "crosskd runs the teacher's Detect head on student features, so it needs the Detect inputs on both "
                "sides: unset kd_feat_layers and kd_teacher_feat_layers"
            )
        ch_s, ch_t = [f.shape[1] for f in s_feats], [f.shape[1] for f in t_feats]
        self.kd_connectors = nn.ModuleDict(
            {t.name: build_connectors(ch_s, ch_t, t.connector) for t in terms if t.source == "feats"}
        ).to(self.device)
        if a.kd_feat_layers:
            self._kd_student_rec = s_rec
        if a.kd_feat_layers or a.kd_teacher_feat_layers:
            self._kd_teacher_rec = t_rec

    def get_validator(self):
        """The stock validator, built from the args without the distillation keys it would reject."""
        with _stock_args(self.args):
            return super().get_validator()

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Build the stock optimizer, plus one group for the adapters with the decayed-weight group's settings."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        if params := list(self.kd_connectors.parameters()):
            template = next(g for g in optimizer.param_groups if not g.get("use_muon"))
            group = {k: v for k, v in template.items() if k != "params"}
            optimizer.add_param_group({**group, "params": params, "param_group": "kd_adapter"})
        if self._qat_lr_scale:  # a QAT fine-tune starts where the stock schedule of the optimizer it picked ends
            for g in optimizer.param_groups:
                g["lr"] *= self._qat_lr_scale
        return optimizer

    def _setup_scheduler(self):
        """The stock schedule; with a mimic stage, one stock schedule per part of the run (``MimicStage.lr_factor``).

        Overridden because the stock factor ``self.lf`` and its scheduler are only built here, no hook reaches them.
        """
        super()._setup_scheduler()
        if self.kd_stage:
            self.lf = self.kd_stage.lr_factor(self.epochs, self.args.lrf, self.args.cos_lr)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)

    def _get_warmup_iterations(self, num_batches: int) -> int:
        """The stock warm-up, except with a mimic stage, where each part warms up on its own (``MimicStage.warm_up``).

        Overridden because the stock loop reads its warm-up length only from here.
        """
        return 0 if self.kd_mimic else super()._get_warmup_iterations(num_batches)

    def _model_train(self):
        """Stock train mode; under QAT (``quantize=8``) BatchNorm keeps the statistics its INT8 ranges were calibrated
        with, as QAT recipes do (the fine-tune is short, and a batch's statistics would shift the calibrated ranges)."""
        super()._model_train()
        if is_int8(self.args.quantize):
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _warm_up_stage(self, i: int, mimic: bool) -> None:
        """``MimicStage.warm_up`` of the stage (``mimic``) or the rest of the run, for batch ``i`` of this epoch."""
        MimicStage(self.kd_mimic_epochs).warm_up(self, i, mimic)

    def _setup_train(self):
        """Stock setup, then install the KD criterion (after the EMA copy) and check the teacher once."""
        self.teacher.to(self.device)  # the device is final here (after _setup_ddp); the adapter pass needs it
        super()._setup_train()
        if self.world_size > 1:  # each rank seeds differently (seed + RANK): start every rank from rank 0's adapters
            for v in self.kd_connectors.state_dict().values():
                dist.broadcast(v, 0)
        self._kd_teacher_parts = None  # the student has started by now (a mimic stage holds the head it needs)
        model = unwrap_model(self.model)
        end2end = getattr(model.model[-1], "one2one_cv2", None) is not None
        resumed = getattr(model, "criterion", None)  # an end-to-end resume restores its o2m/o2o schedule here
        model.criterion = (KDE2ELoss if end2end else KDDetectionLoss)(
            model,
            self.kd_terms,
            alpha=self.kd_alpha,
            conf_weight=self.kd_conf_weight,
            connectors=dict(self.kd_connectors),
            max_ratio=self.args.kd_max_ratio,
            **({} if end2end else {"lad": self.kd_lad}),
        )
        if end2end and resumed is not None:
            model.criterion.updates, model.criterion.o2m, model.criterion.o2o = (
                resumed.updates,
                resumed.o2m,
                resumed.o2o,
            )
        if self.args.kd_teacher_check:  # on every rank: under DDP the stock validator shards and gathers across ranks
            with _preserved_rng():
                self.kd_teacher_metrics = self._check_teacher()
        if self.amp:  # inference only: AMP's own dtype halves the teacher's memory and time
            self.teacher.to(torch.bfloat16 if self.args.amp == "bf16" else torch.float16)

    def _check_teacher(self) -> dict:
        """Validate the teacher on the val split; a teacher that detects nothing can only hurt the student.

        Every batch needs the teacher as loaded, while AutoBackend fuses what it validates and, for an end-to-end model,
        picks a branch by ``args.nms``; the stock standalone validator works on a copy (``get_model``), which
        tests/engine/test_teacher_check.py holds it to.
        """
        with _stock_args(self.args):
            args = copy(self.args)
        args.plots = args.save_json = False
        validator = _TeacherValidator(self.test_loader, save_dir=self.save_dir, args=args)
        metrics = validator(model=self.teacher.model)
        if RANK > 0:  # other DDP ranks only contribute their shard; rank 0 holds the merged metrics
            return {}
        m95, m50 = metrics.get("metrics/mAP50-95(B)", 0.0), metrics.get("metrics/mAP50(B)", 0.0)
        LOGGER.info(f"{PREFIX} teacher on '{self.args.split}': mAP50-95 {m95:.3f}, mAP50 {m50:.3f}")
        if m50 < 0.05:
            LOGGER.warning(
                f"{PREFIX} ⚠️ the teacher reaches only mAP50={m50:.3f} on this dataset: distilling from it will likely "
                f"make the student worse. Check that it was trained on this data (and class order), or set "
                f"kd_teacher_check=False to silence this check"
            )
        return metrics

    # training loop ----------------------------------------------------------------------------------------------------
    def preprocess_batch(self, batch: dict) -> dict:
        """Stock preprocessing, then the teacher's outputs for this batch under ``batch["kd"]``."""
        batch = super().preprocess_batch(batch)
        if not unwrap_model(self.model).training:  # e.g. QAT calibration passes: no loss, no teacher
            return batch
        a, i = self.args, self._kd_batch
        mimic = self.kd_stage is not None and self.kd_stage.active(self.epoch)
        if mimic:  # the imitation term is the whole loss, at full strength
            scale = 1.0
        else:
            off_from = self.epochs - a.close_mosaic if a.kd_off_last and a.close_mosaic else None
            scale = kd_scale(
                self.epoch + i / max(len(self.train_loader), 1), self.epochs, a.kd_warmup, a.kd_decay, off_from
            )
        active = [t for t in self.kd_terms if (t.stage == "mimic") == mimic] or (self.kd_lad and not mimic)
        teacher, student_rec, entry_rec = None, None, None
        s_entries, t_entries = self._kd_entry_recs if mimic else (None, None)
        if scale > 0 and active:  # off epochs (and init-only runs) skip the teacher entirely
            with torch.no_grad(), self._kd_teacher_rec or nullcontext() as rec, t_entries or nullcontext() as erec:
                teacher = self.teacher(batch["img"])
            if rec is not None:
                teacher = {**teacher, "feats": rec.features}
            if erec is not None:
                teacher = {**teacher, "entries": erec.features}
                entry_rec = s_entries.start()
            if self._kd_student_rec is not None:
                student_rec = self._kd_student_rec.start()  # the criterion pops and removes it after the forward
        batch["kd"] = KDBatch(teacher, scale, self.epoch, i, student_rec, mimic=mimic, entry_recorder=entry_rec)
        return batch

    def _kd_transplant(self) -> None:
        """End the mimic stage (``MimicStage.transplant``); the stage calls it here so that subclasses can wrap it."""
        self.kd_stage.transplant(self)

    def optimizer_step(self):
        """Average adapter gradients across DDP ranks (they live outside the DDP-wrapped student), clip them, step."""
        if self.world_size > 1:
            for p in self.kd_connectors.parameters():
                if p.grad is not None:  # SUM then divide: gloo (CPU DDP) has no AVG
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size
        self.clip_adapter_grads()
        super().optimizer_step()

    def clip_adapter_grads(self, max_norm: float = 10.0) -> None:
        """Clip the adapters' gradient norm as the stock step clips the student's (which does not see the adapters).

        The stock step unscales AMP gradients itself and a second ``unscale_`` is an error, so the bound is scaled
        instead: clipping scaled gradients at ``max_norm * scale`` equals clipping the unscaled ones at ``max_norm``.
        """
        params = [p for p in self.kd_connectors.parameters() if p.grad is not None]
        if params:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm * scale)

    # checkpoints ------------------------------------------------------------------------------------------------------
    def kd_state(self) -> dict[str, Any]:
        """What rebuilds the distillation on resume: teacher path and hash, settings, adapter weights."""
        from ultralytics_kd import __version__

        return {
            "teacher": str(self.args.teacher),
            "teacher_weights": self.args.kd_teacher_weights,
            "teacher_sha256": self.kd_teacher_sha256,
            "settings": kd_args(self.args),
            "inherited": self.kd_inherited,
            **(self.kd_stage.state_dict() if self.kd_stage else NO_STAGE_STATE),
            "connectors": {k: v.detach().cpu().clone() for k, v in self.kd_connectors.state_dict().items()},
            "teacher_metrics": {k: float(v) for k, v in (self.kd_teacher_metrics or {}).items()},  # no numpy types
            "qat_lr_scale": self._qat_lr_scale,
            "version": __version__,
        }

    def save_model(self):
        """Stock checkpoints (student EMA only), then add the ``"kd"`` key to the files just written."""
        saved = super().save_model()
        if saved:
            ckpt = torch.load(self.last, map_location="cpu", weights_only=False)
            ckpt["kd"] = self.kd_state()
            buffer = io.BytesIO()
            torch.save(ckpt, buffer)
            files = [self.last]
            if self.best_fitness == self.fitness:
                files.append(self.best)
            if self.save_period > 0 and self.epoch % self.save_period == 0:
                files.append(self.wdir / f"epoch{self.epoch}.pt")
            for f in files:
                f.write_bytes(buffer.getvalue())
        return saved

    # the start and the stage under the names the trainer gave them before they had objects -------------------------
    @property
    def kd_inherited(self) -> bool:
        """The student started from a selection of the teacher's weights."""
        return self.kd_start.mode == "select"

    @property
    def kd_mimic(self) -> bool:
        """The run has a mimic stage."""
        return self.kd_stage is not None

    @property
    def kd_mimic_epochs(self) -> int:
        """Length of the mimic stage; 0 without one."""
        return self.kd_stage.epochs if self.kd_stage else 0

    @property
    def _kd_transplanted(self) -> bool:
        """The mimic stage is over and the student has the teacher's head."""
        return self.kd_stage is not None and self.kd_stage.transplanted


def _qat_fine_tune(args, given: dict[str, Any]) -> float | None:
    """Settings of a QAT fine-tune (``quantize=8``) that the user did not set; return the factor for the optimizer's lr.

    QAT fine-tunes a trained student for a few epochs. The stock schedule would restart at lr0 with a warm-up (bias lr
    0.1), which throws a converged student far off before its INT8 ranges matter; QAT recipes instead hold the learning
    rate the float training ended at. So, unless given: no warm-up, a constant rate (``lrf=1``), and that rate is the
    end of the stock schedule, the optimizer's own lr times the default ``lrf`` (applied in ``build_optimizer``, after
    ``optimizer=auto`` picked its optimizer and lr).
    """
    if not is_int8(args.quantize):
        return None
    scale = None if "lr0" in given or "lrf" in given else float(args.lrf)
    changed = []
    if "warmup_epochs" not in given:
        args.warmup_epochs = 0
        changed.append("warmup_epochs=0")
    if "lrf" not in given:
        args.lrf = 1.0
        changed.append("lrf=1")
    if scale:
        changed.append(f"the optimizer's lr x {scale:g}")
    if changed:
        LOGGER.info(
            f"{PREFIX} quantize=8 fine-tunes a trained student at the rate a stock run ends with: "
            + ", ".join(changed)
            + " (set lr0, lrf or warmup_epochs to choose yourself)"
        )
    return scale


def _teacher_sha256(args) -> str:
    """Hash of the teacher's weights file (``kd_teacher_weights`` for a YAML teacher), or a readable error."""
    path = args.kd_teacher_weights or args.teacher
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"teacher file '{path}' not found. On resume, a teacher that moved can be given again: "
            f"yolo-kd train resume model=path/to/last.pt teacher=new/path/teacher.pt (its hash is checked)"
        )
    return file_sha256(path)


def _new_epoch(trainer: KDTrainer) -> None:
    """Restart the batch index that the KD schedule reads (``on_train_epoch_start``, also on an OOM restart)."""
    trainer._kd_batch = -1


def _next_batch(trainer: KDTrainer) -> None:
    """Advance the batch index; a mimic stage hands over the head when due and warms up (``on_train_batch_start``)."""
    trainer._kd_batch += 1
    if trainer.kd_stage is not None:
        trainer.kd_stage.on_train_batch_start(trainer, trainer._kd_batch)


def _write_report(trainer: KDTrainer) -> None:
    """Write kd_report.md and its plots into the run folder; a failed report never fails the finished training."""
    from ultralytics_kd.report import write_report

    try:
        write_report(trainer.save_dir, teacher_metrics=trainer.kd_teacher_metrics)  # kept as kd_teacher.json
    except Exception as e:
        LOGGER.warning(f"{PREFIX} could not write kd_report.md in {trainer.save_dir}: {type(e).__name__}: {e}")


_CALLBACKS = {"on_train_epoch_start": _new_epoch, "on_train_batch_start": _next_batch, "on_train_end": _write_report}
