"""KDTrainer: Ultralytics' DetectionTrainer plus a frozen teacher and a distillation criterion.

The training loop, EMA, validation, checkpointing, close_mosaic, AMP and DDP are Ultralytics' own; this class only
overrides hooks, and each hook calls the module that owns the work:

- settings and pre-setup checks: ``distill/settings.py``; the teacher (load, check, hash, validate):
  ``distill/teacher.py``; how the student starts: ``distill/start.py`` and its mimic stage ``distill/stage.py``;
  the terms and the feature side: ``distill/build.py``; the criterion: ``distill/criterion.py``;
- resume state and hashing: ``engine/resume.py``; callbacks and the report: ``engine/callbacks.py``;
- QAT (``quantize=8``): ``deploy/int8.py``; AutoBatch with the teacher: ``engine/autobatch.py``.

The ``teacher`` and ``kd_*`` keys (``cfg/kd.yaml``) join the base config the stock key check compares against, so
typos are still rejected and the settings live in ``self.args`` (hence in DDP workers and ``args.yaml``).

Examples:
    >>> from ultralytics import YOLO
    >>> from ultralytics_kd import KDTrainer
    >>> YOLO("yolov9t.yaml").train(trainer=KDTrainer, teacher="teacher.pt", data="data.yaml", epochs=100)
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from ultralytics.cfg import cfg2dict
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_kd.deploy.int8 import check_qat_start, freeze_batchnorm, qat_fine_tune
from ultralytics_kd.distill.build import build_feature_side, build_terms, describe_run
from ultralytics_kd.distill.connectors import adapter_group, clip_adapter_grads
from ultralytics_kd.distill.criterion import KDBatch, install_criterion
from ultralytics_kd.distill.labeller import setup_pseudo_labels, unlabeled_views
from ultralytics_kd.distill.recipes import get_recipe
from ultralytics_kd.distill.recorders import FeatureRecorder
from ultralytics_kd.distill.schedule import batch_scale
from ultralytics_kd.distill.settings import KD_DEFAULTS, check_before_setup, check_compile, check_kd_args, stock_args
from ultralytics_kd.distill.stage import mimic_epochs
from ultralytics_kd.distill.start import Start, TeacherParts, choose_start
from ultralytics_kd.distill.teacher import FrozenTeacher, check_pair, load_teacher, teacher_sha256, validate_teacher
from ultralytics_kd.distill.unlabeled import merge_unlabeled, repeat_labeled, run_unlabeled, unlabeled_stream
from ultralytics_kd.engine.autobatch import with_teacher
from ultralytics_kd.engine.callbacks import add_kd_callbacks
from ultralytics_kd.engine.resume import add_kd_state, check_resumed_teacher, load_kd_state
from ultralytics_kd.engine.rundir import discard_on_error, new_run_dir

__all__ = ["KDTrainer"]

PREFIX = colorstr("KD:")
TEACHER_KEYS = ("teacher", "kd_teacher_weights")


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
        kd_unlabeled_plan (UnlabeledPlan): What unlabelled images learn (``kd_unlabeled_terms``), where there are some.
        kd_labeller (PseudoLabeller | None): The student's best EMA labelling them (``kd_pseudo_from=best``).
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict[str, Any] | None = None, _callbacks: dict | None = None):
        """Validate the distillation settings, set up the stock trainer, then load and check the teacher."""
        base, overrides = {**KD_DEFAULTS, **cfg2dict(cfg)}, dict(overrides or {})
        check_before_setup({**base, **overrides})
        # the stock resume restores every setting from the checkpoint; a moved teacher file may be given again
        moved = {k: overrides.pop(k) for k in TEACHER_KEYS if overrides.get("resume") and overrides.get(k)}
        self._kd_new_run = new_run_dir(base, overrides)
        with discard_on_error(self._kd_new_run):  # bad input leaves no empty run folder behind
            super().__init__(base, overrides, _callbacks)
            check_kd_args(vars(self.args))  # a resumed run takes its settings from the checkpoint's train_args
            a = self.args
            if self.resume:
                self.kd_teacher_sha256 = check_resumed_teacher(a, moved)
            teacher = load_teacher(a.teacher, a.kd_teacher_weights, nc=self.data["nc"], ch=self.data["channels"])
            if not self.resume:
                self.kd_teacher_sha256 = teacher_sha256(a)
            self._qat_lr_scale = None if self.resume else qat_fine_tune(a, overrides)
            check_pair(teacher, data=self.data)
            self._kd_init_mode = get_recipe(a.kd_recipe).init if a.kd_init is None else a.kd_init
            self._kd_teacher_parts = TeacherParts.of(teacher, self._kd_init_mode)  # before FrozenTeacher fuses them
            self.kd_unlabeled = run_unlabeled(a.unlabeled, self.data, self.save_dir, self.resume)
        # on CPU until _setup_train: a DDP worker's device (cuda:LOCAL_RANK) is only set by _setup_ddp, and the
        # launching process never trains, so a copy on self.device here would sit on cuda:0 in every process
        self.teacher = FrozenTeacher(teacher)
        self.kd_terms, self.kd_connectors = [], nn.ModuleDict()
        self.kd_teacher_metrics = self.kd_labeller = None  # the labeller: from _setup_train on
        self._kd_resume, self._kd_batch = None, 0
        self.kd_start, self.kd_stage = Start(init=self._kd_init_mode), None
        self._kd_student_rec = self._kd_teacher_rec = None
        self._kd_entry_recs = (None, None)  # student and teacher recorders of a graft stage's backbone outputs
        self._kd_unlabeled = None  # the unlabelled images' batches (distill/unlabeled.py), from _setup_train on
        add_kd_callbacks(self)

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
            check_compile(self.args.compile, self.kd_start.mode)
            self.kd_stage = self.kd_start.take(model, self._kd_teacher_parts)
            model.kd_start = self.kd_start  # DDP workers get this model pickled, and never call get_model
        return model

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        """The stock dataset; with ``unlabeled=`` (and ``kd_unlabeled_sweep``) the training one repeats its images so
        that an epoch covers every unlabelled image (``distill/unlabeled.repeat_labeled``)."""
        dataset = super().build_dataset(img_path, mode, batch)
        if mode == "train" and getattr(self, "kd_unlabeled", None) and self.args.kd_unlabeled_sweep:
            repeat_labeled(dataset, len(self.kd_unlabeled), self.args.kd_unlabeled_ratio)
        return dataset

    def setup_model(self):
        """Load the student as usual; on resume also keep the checkpoint's distillation state."""
        ckpt = super().setup_model()
        self._kd_resume = (ckpt or {}).get("kd") if self.resume else None
        if self._kd_resume:  # the student loads its own weights now; how it started is in the checkpoint
            self._qat_lr_scale = self._kd_resume.get("qat_lr_scale")
            n = mimic_epochs(self.args.kd_mimic_epochs, self.epochs)
            parts = self._kd_teacher_parts
            self.kd_start = Start.resumed(self._kd_resume, self._kd_init_mode, self.model, parts, n)
            self.kd_stage = parts.stage(self.kd_start)  # its state and the adapters load in _load_checkpoint_state
        start = self.model.__dict__.pop("kd_start", None)  # off the student, so that no checkpoint carries it
        if start is not None and start is not self.kd_start:  # a DDP worker: take the launcher's decision
            self.kd_start = start
            self.kd_stage = self._kd_teacher_parts.stage(start)
        return ckpt

    def set_model_attributes(self):
        """Check the teacher against the built student, then build the terms and adapters before the optimizer."""
        super().set_model_attributes()
        student, a, stage = self.model, self.args, self.kd_stage
        problems = check_pair(self.teacher.model, student)
        check_qat_start(a.quantize, stage is not None)
        terms, self.kd_alpha, self.kd_conf_weight, self.kd_lad, self.kd_unlabeled_plan = build_terms(
            a, self.teacher.model, student, problems, self.kd_start, stage
        )
        self.kd_terms = terms
        if any(t.source == "feats" for t in terms):
            self.kd_connectors, self._kd_student_rec, self._kd_teacher_rec = build_feature_side(
                a, student, self.teacher, terms, self.data["channels"], self.device
            )
        if stage and stage.graft:  # the backbone outputs that the grafted layers read, on both sides
            s_layers, t_layers = zip(*stage.graft.entries)
            self._kd_entry_recs = FeatureRecorder(student, s_layers), FeatureRecorder(self.teacher.model, t_layers)
        LOGGER.info(describe_run(a, terms, self.kd_alpha, self.kd_conf_weight, self.kd_lad, self._kd_init_mode, stage))

    def get_validator(self):
        """The stock validator, built from the args without the distillation keys it would reject."""
        with stock_args(self.args):
            return super().get_validator()

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Build the stock optimizer, plus one group for the adapters with the settings of the student's ordinary
        decayed weights (``connectors.adapter_group``)."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        if params := list(self.kd_connectors.parameters()):
            optimizer.add_param_group(adapter_group(optimizer, model, params))
        if self._qat_lr_scale:  # a QAT fine-tune starts where the stock schedule of the optimizer it picked ends
            for g in optimizer.param_groups:
                g["lr"] *= self._qat_lr_scale
        return optimizer

    def _setup_scheduler(self):
        """The stock schedule; with a mimic stage, one per part of the run (``MimicStage.lr_factor``); only here."""
        super()._setup_scheduler()
        if self.kd_stage:
            self.kd_stage.follow(self)  # time= re-estimates epochs after every epoch, then calls this
            self.lf = self.kd_stage.lr_factor(self.epochs, self.args.lrf, self.args.cos_lr)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)

    def _get_warmup_iterations(self, num_batches: int) -> int:
        """The stock warm-up; with a mimic stage each part warms up on its own (``MimicStage.warm_up``)."""
        return 0 if self.kd_stage else super()._get_warmup_iterations(num_batches)

    def _model_train(self):
        """Stock train mode; under QAT (``quantize=8``) BatchNorm keeps its calibrated statistics."""
        super()._model_train()
        freeze_batchnorm(self.model, self.args.quantize)

    def _setup_train(self):
        """Stock setup, then install the KD criterion (after the EMA copy) and check the teacher once."""
        self.teacher.to(self.device)  # the device is final here (after _setup_ddp); the adapter pass needs it
        with discard_on_error(self._kd_new_run):  # the student-teacher checks run in here
            super()._setup_train()
        if self.world_size > 1:  # each rank seeds differently (seed + RANK): start every rank from rank 0's adapters
            for v in self.kd_connectors.state_dict().values():
                dist.broadcast(v, 0)
        self._kd_teacher_parts = None  # the student has started by now (a mimic stage holds the head it needs)
        self._kd_unlabeled = unlabeled_stream(self)
        plan = self.kd_unlabeled_plan if self._kd_unlabeled is not None else None
        kw = dict(alpha=self.kd_alpha, conf_weight=self.kd_conf_weight, lad=self.kd_lad, unlabeled=plan)
        kw.update(connectors=dict(self.kd_connectors), max_ratio=self.args.kd_max_ratio)
        install_criterion(unwrap_model(self.model), self.kd_terms, **kw)
        if self.args.kd_teacher_check:  # on every rank: under DDP the stock validator shards and gathers across ranks
            self.kd_teacher_metrics = validate_teacher(self.teacher.model, self.test_loader, self.args, self.save_dir)
        self.kd_labeller = setup_pseudo_labels(self)  # kd_pseudo_conf=auto; kd_pseudo_from=best's labeller
        if self.amp:  # inference only: AMP's own dtype halves the teacher's memory and time
            self.teacher.to(torch.bfloat16 if self.args.amp == "bf16" else torch.float16)

    def auto_batch(self, *args, **kwargs) -> int:
        """Stock AutoBatch (``batch=-1`` or a fraction), its memory probe run on the student and teacher together."""
        with with_teacher(self):
            return super().auto_batch(*args, **kwargs)

    # training loop ----------------------------------------------------------------------------------------------------
    def preprocess_batch(self, batch: dict) -> dict:
        """Stock preprocessing (of the labelled and any unlabelled images together), then the teacher's outputs for
        this batch under ``batch["kd"]``."""
        if not unwrap_model(self.model).training:  # e.g. QAT calibration passes: no loss, no teacher
            return super().preprocess_batch(batch)
        i = self._kd_batch
        mimic, scale, settling = batch_scale(
            self.args, self.epoch, i, len(self.train_loader), self.epochs, self.kd_stage
        )
        unl = self._kd_unlabeled is not None and self.kd_unlabeled_plan.active(mimic)
        active = any((t.stage == "mimic") == mimic for t in self.kd_terms) or (self.kd_lad and not mimic) or unl
        teacher, student_rec, entry_rec, n_labeled = None, None, None, None
        if scale > 0 and unl:  # only a teacher teaches on unlabelled images
            batch, n_labeled = merge_unlabeled(batch, next(self._kd_unlabeled))
        batch = super().preprocess_batch(batch)
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
        pseudo = unlabeled_views(self, batch, n_labeled) if teacher is not None else None  # the teacher saw it
        batch["kd"] = KDBatch(teacher, scale, self.epoch, i, student_rec, mimic, entry_rec, n_labeled, settling, pseudo)
        return batch

    def _close_dataloader_mosaic(self):
        """Close mosaic on the unlabelled images' loader too, when the stock loop closes it on the labelled one."""
        super()._close_dataloader_mosaic()
        if self._kd_unlabeled is not None:
            self._kd_unlabeled.close_mosaic(self.args)

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
        """Clip the adapters' gradients (``connectors.clip_adapter_grads``)."""
        clip_adapter_grads(self.kd_connectors, self.scaler, max_norm)

    # checkpoints ------------------------------------------------------------------------------------------------------
    def _load_checkpoint_state(self, ckpt: dict) -> None:
        """Stock state, then the adapters and the stage's (``load_kd_state``); resume and NaN recovery load here."""
        super()._load_checkpoint_state(ckpt)
        load_kd_state(self, ckpt.get("kd"))

    def save_model(self):
        """Stock checkpoints (student EMA only), then add the ``"kd"`` key (``engine/resume.kd_state``) to them."""
        saved = super().save_model()
        if saved:
            add_kd_state(self)
        return saved
