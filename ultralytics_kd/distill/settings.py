"""The ``kd_*`` train arguments: their defaults (``ultralytics_kd/cfg/kd.yaml``) and value checks.

Checks run before any file, model or dataset is touched, and every message names the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ultralytics.utils import YAML

from ultralytics_kd.distill.recipes import _expand_weights, get_recipe

__all__ = ["INIT_MODES", "KD_CFG_PATH", "KD_DEFAULTS", "KD_KEYS", "check_kd_args", "kd_args"]

KD_CFG_PATH = Path(__file__).resolve().parents[1] / "cfg" / "kd.yaml"
KD_DEFAULTS: dict[str, Any] = YAML.load(KD_CFG_PATH)
KD_KEYS = frozenset(KD_DEFAULTS)
INIT_MODES = ("auto", "select", "graft", "mimic", "none")  # kd_init: see distill/inherit.py and distill/transplant.py


def kd_args(args: Any) -> dict[str, Any]:
    """The distillation settings out of a dict or namespace of train arguments (defaults filled in)."""
    d = args if isinstance(args, Mapping) else vars(args)
    return {k: d.get(k, v) for k, v in KD_DEFAULTS.items()}


def _number(args: Mapping, key: str) -> float | None:
    v = args.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key}={v!r} must be a number, e.g. {key}={KD_DEFAULTS.get(key) or 1.0}")
    return float(v)


def check_kd_args(args: Mapping[str, Any]) -> None:
    """Validate the values of the distillation settings.

    Args:
        args (Mapping[str, Any]): Train arguments; keys other than ``teacher`` and ``kd_*`` are ignored.

    Raises:
        ValueError: Naming the offending key, its value and the fix.

    Examples:
        >>> check_kd_args({"kd_T": 2.0, "kd_alpha": 0.5})
        >>> check_kd_args({"kd_T": 0})
        Traceback (most recent call last):
        ...
        ValueError: kd_T=0.0 must be > 0 (a softmax temperature), e.g. kd_T=2
    """
    args = kd_args(args)
    if (t := _number(args, "kd_T")) is not None and t <= 0:
        raise ValueError(f"kd_T={t} must be > 0 (a softmax temperature), e.g. kd_T=2")
    if (a := _number(args, "kd_alpha")) is not None and not 0.0 <= a <= 1.0:
        raise ValueError(f"kd_alpha={a} must be in [0, 1] (the weight of the detection loss), e.g. kd_alpha=0.65")
    if (m := _number(args, "kd_mimic_epochs")) is not None and m <= 0:
        raise ValueError(f"kd_mimic_epochs={m} must be > 0 (epochs, or a fraction of epochs below 1), e.g. 0.25")
    for key in ("kd_warmup", "kd_decay", "kd_max_ratio"):
        if (v := _number(args, key)) is not None and v < 0:
            raise ValueError(f"{key}={v} must be >= 0, e.g. {key}={KD_DEFAULTS[key]}")
    recipe = get_recipe(args["kd_recipe"])
    w = args["kd_weights"]
    if isinstance(w, str):
        raise ValueError(f"kd_weights={w!r} must be a number or a list of numbers, e.g. kd_weights=[2.0,2.0]")
    _expand_weights(w, len(recipe.terms))
    for key in ("kd_feat_layers", "kd_teacher_feat_layers"):
        v = args[key]
        if v is not None and not (isinstance(v, (list, tuple)) and v and all(isinstance(i, int) for i in v)):
            raise ValueError(f"{key}={v!r} must be a list of layer indices, e.g. {key}=[15,18,21]")
    for key in ("kd_conf_weight", "kd_cwd_norm", "kd_lad", "kd_off_last", "kd_teacher_check"):
        if args[key] is not None and not isinstance(args[key], bool):
            raise ValueError(f"{key}={args[key]!r} must be True or False")
    if args["kd_init"] is not None and args["kd_init"] not in INIT_MODES:
        raise ValueError(f"kd_init={args['kd_init']!r} must be one of {list(INIT_MODES)}, e.g. kd_init=auto")
    for key in ("teacher", "kd_teacher_weights"):
        if args[key] is not None and not isinstance(args[key], (str, Path)):
            raise ValueError(f"{key}={args[key]!r} must be a file path")
