"""What the trainer builds once the student exists: the terms of the recipe for this start, and the feature side.

``build_terms`` turns ``kd_recipe`` (and the start: a selected student or one with a mimic stage trains with the terms
its recipe names for that case) into the list of terms, and ``kd_unlabeled_terms`` into what unlabelled images learn;
``build_feature_side`` pairs student and teacher feature layers, measures their channels with one dummy pass and
builds the adapters (connectors) of every feature term.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from ultralytics.utils import LOGGER, colorstr

from ultralytics_kd.distill.connectors import build_connectors
from ultralytics_kd.distill.losses.base import KDTerm
from ultralytics_kd.distill.recipes import Recipe, get_recipe
from ultralytics_kd.distill.recorders import FeatureRecorder
from ultralytics_kd.distill.stage import MimicStage
from ultralytics_kd.distill.start import Start
from ultralytics_kd.distill.unlabeled_terms import UnlabeledPlan, plan_unlabeled

__all__ = ["build_feature_side", "build_terms", "describe_run", "effective_recipe"]

PREFIX = colorstr("KD:")


def effective_recipe(args: Any, start: Start, stage: MimicStage | None) -> Recipe:
    """The recipe named by ``kd_recipe``, or the one it names for a student that inherited the teacher's weights.

    A resumed run keeps the terms it started with (its start is read from the checkpoint). ``kd_weights`` are given
    per term of the named recipe, so with them its own terms are kept.
    """
    recipe = get_recipe(args.kd_recipe)
    selected = start.mode == "select"
    other = recipe.inherited if selected else recipe.mimicked if stage else None
    if not other:
        return recipe
    if args.kd_weights is not None:
        LOGGER.info(f"{PREFIX} kd_recipe={args.kd_recipe} keeps its own terms: kd_weights sets their weights")
        return recipe
    taken = "a selection of the teacher's neck and head" if stage and stage.graft else "the teacher's head"
    how = "inherited the teacher's weights" if selected else f"takes {taken} after the stage"
    LOGGER.info(f"{PREFIX} the student {how}: kd_recipe={args.kd_recipe} trains with the terms of '{other}'")
    return get_recipe(other)


def build_terms(
    args: Any, teacher: nn.Module, student: nn.Module, problems: list[str], start: Start, stage: MimicStage | None
) -> tuple[list[KDTerm], float, bool | None, bool, UnlabeledPlan]:
    """The terms of the run, with what the pair or the settings rule out switched off or refused.

    Args:
        args: The trainer's args.
        teacher (nn.Module): The teacher model.
        student (nn.Module): The student model.
        problems (list[str]): ``check_pair``'s warnings for this pair (e.g. ``"reg_max"``).
        start (Start): How the student started.
        stage (MimicStage | None): Its mimic stage; its imitation term leads the list.

    Returns:
        (tuple[list[KDTerm], float, bool | None, bool, UnlabeledPlan]): The terms, ``alpha``, ``conf_weight``, ``lad``
            and what unlabelled images learn (used where the run has some).
    """
    recipe = effective_recipe(args, start, stage)
    terms, alpha, conf_weight = recipe.build(
        args.kd_weights,
        args.kd_T,
        args.kd_alpha,
        args.kd_conf_weight,
        options=None if args.kd_cwd_norm is None else {"cwd": {"norm": args.kd_cwd_norm}},
    )
    t_bins, s_bins = teacher.model[-1].reg_max, student.model[-1].reg_max
    ld_ok = "reg_max" not in problems and s_bins > 1
    if not ld_ok and any(t.name == "ld" for t in terms):
        LOGGER.warning(
            f"{PREFIX} teacher reg_max={t_bins}, student reg_max={s_bins}: LD compares DFL bins (it needs the "
            f"same reg_max > 1 on both sides) and is switched off"
        )
        terms = [t for t in terms if t.name != "ld"]
    lad = recipe.lad if args.kd_lad is None else bool(args.kd_lad)
    if lad and getattr(student.model[-1], "one2one_cv2", None) is not None:
        raise ValueError(
            "kd_lad=True assigns a one-to-many student's targets from the teacher; this student has an end-to-end "
            "(one-to-one) head, whose assignment it does not cover. Set kd_lad=False or use a one-to-many student"
        )
    if stage:  # the imitation term is the whole loss of the stage's epochs
        terms = [stage.term, *terms]
    tau = recipe.tau if args.kd_T is None else float(args.kd_T)
    unlabeled = plan_unlabeled(args.kd_unlabeled_terms, args.kd_pseudo_conf, terms, tau, ld_ok, args.kd_pseudo_low)
    return terms, alpha, conf_weight, lad, unlabeled


def build_feature_side(
    args: Any, student: nn.Module, teacher: nn.Module, terms: list[KDTerm], channels: int, device: torch.device
) -> tuple[nn.ModuleDict, FeatureRecorder | None, FeatureRecorder | None]:
    """Pair student and teacher feature layers, measure their channels with one dummy pass, build adapters.

    Args:
        args: The trainer's args (``kd_feat_layers``, ``kd_teacher_feat_layers``).
        student (nn.Module): The student model.
        teacher (nn.Module): The frozen teacher (``FrozenTeacher``), called as in training.
        terms (list[KDTerm]): The run's terms; each feature term gets its adapters.
        channels (int): Image channels of the dataset.
        device (torch.device): Where the adapters live.

    Returns:
        (tuple): The adapters per feature term, and the student's and teacher's recorders where layers other than the
            Detect inputs are distilled (None otherwise: the criterion reads the Detect inputs without hooks).
    """
    tm = teacher.model
    s_layers = list(args.kd_feat_layers or student.model[-1].f)
    t_layers = list(args.kd_teacher_feat_layers or tm.model[-1].f)
    if len(s_layers) != len(t_layers):
        raise ValueError(
            f"{len(s_layers)} student feature layers {s_layers} but {len(t_layers)} teacher layers {t_layers}; "
            f"set kd_feat_layers and kd_teacher_feat_layers to lists of the same length"
        )
    s_rec, t_rec = FeatureRecorder(student, s_layers), FeatureRecorder(tm, t_layers)
    size = int(max(student.stride.max(), tm.stride.max())) * 2
    im = torch.zeros(1, channels, size, size, device=device)
    was_training = student.training
    student.eval()
    with torch.no_grad(), s_rec, t_rec:
        student(im)
        teacher(im)
    student.train(was_training)
    s_feats, t_feats = s_rec.features, t_rec.features
    if bad := [(s.shape[-2:], t.shape[-2:]) for s, t in zip(s_feats, t_feats) if s.shape[-2:] != t.shape[-2:]]:
        raise ValueError(f"paired feature maps differ in resolution {bad}; pair layers with the same stride")
    if args.kd_feat_layers and any(t.name == "sl2" for t in terms) and s_layers != list(student.model[-1].f):
        raise ValueError(
            "sl2 weights locations by the head's scores, so it needs the Detect inputs: unset kd_feat_layers"
        )
    if (args.kd_feat_layers or args.kd_teacher_feat_layers) and any(t.name == "crosskd" for t in terms):
        raise ValueError(
            "crosskd runs the teacher's Detect head on student features, so it needs the Detect inputs on both "
            "sides: unset kd_feat_layers and kd_teacher_feat_layers"
        )
    ch_s, ch_t = [f.shape[1] for f in s_feats], [f.shape[1] for f in t_feats]
    connectors = {t.name: build_connectors(ch_s, ch_t, t.connector) for t in terms if t.source == "feats"}
    s_out = s_rec if args.kd_feat_layers else None
    t_out = t_rec if args.kd_feat_layers or args.kd_teacher_feat_layers else None
    return nn.ModuleDict(connectors).to(device), s_out, t_out


def describe_run(
    args: Any, terms: list[KDTerm], alpha: float, conf_weight: bool | None, lad: bool, init: str, stage: Any
) -> str:
    """The start-of-training line: teacher, recipe, terms and their settings, the start's stage and any settling."""
    return (
        f"{PREFIX} teacher {args.teacher}, recipe '{args.kd_recipe}': alpha={alpha:g}, terms ["
        + ", ".join(f"{t.name}(w={t.weight:g}, T={t.tau:g})" for t in terms)
        + f"], conf_weight={conf_weight}, max_ratio={args.kd_max_ratio:g}, lad={lad}, init={init}"
        + (f", mimic stage: epochs 1-{stage.epochs}" if stage else "")
        + (
            f", settling for {args.kd_settle:g} epochs (the terms ramp in from 0 and the feature terms train only "
            f"their adapters)"
            if args.kd_settle
            else ""
        )
    )
