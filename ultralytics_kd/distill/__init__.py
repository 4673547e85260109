"""Distillation: recorders (feature hooks), connectors (channel adapters), losses (one term per file), recipes, and
the criterion that composes them."""

from ultralytics_kd.distill.connectors import ChannelAdapter, build_connectors
from ultralytics_kd.distill.criterion import KDBatch, KDDetectionLoss, KDE2ELoss
from ultralytics_kd.distill.losses import TERMS, KDTerm, register_term
from ultralytics_kd.distill.recipes import RECIPES, Recipe, TermSpec, get_recipe
from ultralytics_kd.distill.recorders import FeatureRecorder
from ultralytics_kd.distill.schedule import kd_scale
from ultralytics_kd.distill.settings import KD_DEFAULTS, check_kd_args

__all__ = [
    "KD_DEFAULTS",
    "RECIPES",
    "TERMS",
    "ChannelAdapter",
    "FeatureRecorder",
    "KDBatch",
    "KDDetectionLoss",
    "KDE2ELoss",
    "KDTerm",
    "Recipe",
    "TermSpec",
    "build_connectors",
    "check_kd_args",
    "get_recipe",
    "kd_scale",
    "register_term",
]
