"""Distillation terms, one per file, registered by name for recipes."""

from ultralytics_kd.distill.losses.base import TERMS, KDTerm, anchor_mean, register_term
from ultralytics_kd.distill.losses.box import BoxImitation
from ultralytics_kd.distill.losses.cls_bce import ClassBCE
from ultralytics_kd.distill.losses.cls_kl import ClassKL
from ultralytics_kd.distill.losses.crosskd import CrossHeadKD
from ultralytics_kd.distill.losses.cwd import ChannelWiseDistill
from ultralytics_kd.distill.losses.feat_mse import FeatureMSE
from ultralytics_kd.distill.losses.ld import LocalizationDistill
from ultralytics_kd.distill.losses.mgd import MaskedGenerativeDistill
from ultralytics_kd.distill.losses.mimic import EntryMimic, FeatureMimic
from ultralytics_kd.distill.losses.sl2 import ScoreWeightedL2

__all__ = [
    "TERMS",
    "BoxImitation",
    "ChannelWiseDistill",
    "ClassBCE",
    "ClassKL",
    "CrossHeadKD",
    "FeatureMSE",
    "EntryMimic",
    "FeatureMimic",
    "KDTerm",
    "LocalizationDistill",
    "MaskedGenerativeDistill",
    "ScoreWeightedL2",
    "anchor_mean",
    "register_term",
]
