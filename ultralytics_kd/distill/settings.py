"""The ``kd_*`` train arguments: their defaults (``ultralytics_kd/cfg/kd.yaml``) and value checks.

Checks run before any file, model or dataset is touched, and every message names the fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ultralytics.utils import YAML

from ultralytics_kd.distill.recipes import _expand_weights, get_recipe
from ultralytics_kd.distill.unlabeled_terms import DEFAULT_UNLABELED_TERMS, PSEUDO_FROM, UNLABELED_TERMS

__all__ = [
    "INIT_MODES",
    "KD_CFG_PATH",
    "KD_DEFAULTS",
    "KD_KEYS",
    "check_before_setup",
    "check_compile",
    "check_kd_args",
    "kd_args",
    "stock_args",
]

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
        SyntaxError: A ``kd_*`` key that does not exist, with the closest ones (before the stock key check, which
            would print the whole ``yolo`` help first).
        ValueError: Naming the offending key, its value and the fix.

    Examples:
        >>> check_kd_args({"kd_T": 2.0, "kd_alpha": 0.5})
        >>> check_kd_args({"kd_T": 0})
        Traceback (most recent call last):
        ...
        ValueError: kd_T=0.0 must be > 0 (a softmax temperature), e.g. kd_T=2
    """
    if unknown := sorted(k for k in args if str(k).startswith("kd_") and k not in KD_KEYS):
        from difflib import get_close_matches

        raise SyntaxError(
            " ".join(
                f"'{k}' is not a valid YOLO argument (no distillation setting has that name); similar: "
                f"{get_close_matches(k, KD_KEYS, cutoff=0.5) or 'none'}."
                for k in unknown
            )
            + f" The kd_* keys and their defaults are in {KD_CFG_PATH}"
        )
    args = kd_args(args)
    if (t := _number(args, "kd_T")) is not None and t <= 0:
        raise ValueError(f"kd_T={t} must be > 0 (a softmax temperature), e.g. kd_T=2")
    if (a := _number(args, "kd_alpha")) is not None and not 0.0 <= a <= 1.0:
        raise ValueError(f"kd_alpha={a} must be in [0, 1] (the weight of the detection loss), e.g. kd_alpha=0.65")
    if (m := _number(args, "kd_mimic_epochs")) is not None and m <= 0:
        raise ValueError(f"kd_mimic_epochs={m} must be > 0 (epochs, or a fraction of epochs below 1), e.g. 0.25")
    if (r := _number(args, "kd_unlabeled_ratio")) is not None and r <= 0:
        raise ValueError(f"kd_unlabeled_ratio={r} must be > 0 (unlabelled images per labelled one), e.g. 1.0")
    if args.get("kd_pseudo_conf") != "auto" and ((c := _number(args, "kd_pseudo_conf")) is None or not 0.0 < c < 1.0):
        raise ValueError(
            f"kd_pseudo_conf={c} must be in (0, 1) (a teacher box's confidence) or 'auto' (the teacher's max-F1 "
            f"confidence on val), e.g. kd_pseudo_conf=0.5"
        )
    if (lo := _number(args, "kd_pseudo_low")) is not None and not 0.0 <= lo < 1.0:
        raise ValueError(f"kd_pseudo_low={lo} must be in [0, 1) (a teacher box's confidence; 0 = off), e.g. 0.1")
    if (pf := args["kd_pseudo_from"]) not in PSEUDO_FROM:
        raise ValueError(
            f"kd_pseudo_from={pf!r} must be one of {list(PSEUDO_FROM)} (which model's boxes are the pseudo-labels), "
            f"e.g. kd_pseudo_from=best"
        )
    if (ut := args["kd_unlabeled_terms"]) is not None and ut not in UNLABELED_TERMS:
        raise ValueError(
            f"kd_unlabeled_terms={ut!r} must be one of {list(UNLABELED_TERMS)} (what unlabelled images learn), e.g. "
            f"kd_unlabeled_terms=dense"
        )
    _check_pseudo_options(args)
    u = args["unlabeled"]
    if u is not None and not (isinstance(u, (str, Path)) or isinstance(u, (list, tuple)) and u):
        raise ValueError(f"unlabeled={u!r} must be a folder, a .txt list of images, or a list of these")
    for key in ("kd_warmup", "kd_settle", "kd_decay", "kd_max_ratio"):
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
    for key in (
        "kd_conf_weight",
        "kd_cwd_norm",
        "kd_lad",
        "kd_off_last",
        "kd_teacher_check",
        "kd_unlabeled_sweep",
        "kd_unlabeled_strong",
    ):
        if args[key] is not None and not isinstance(args[key], bool):
            raise ValueError(f"{key}={args[key]!r} must be True or False")
    if args["kd_init"] is not None and args["kd_init"] not in INIT_MODES:
        raise ValueError(f"kd_init={args['kd_init']!r} must be one of {list(INIT_MODES)}, e.g. kd_init=auto")
    for key in ("teacher", "kd_teacher_weights"):
        if args[key] is not None and not isinstance(args[key], (str, Path)):
            raise ValueError(f"{key}={args[key]!r} must be a file path")


def _check_pseudo_options(args: Mapping[str, Any]) -> None:
    """Refuse a pseudo-label option that would do nothing: the chosen ``kd_unlabeled_terms`` takes no pseudo-labels."""
    terms = args["kd_unlabeled_terms"] or DEFAULT_UNLABELED_TERMS
    if "pseudo" in terms.split("+"):
        return
    given = [
        f"{k}={args[k]}" for k in ("kd_pseudo_conf", "kd_pseudo_low", "kd_pseudo_from") if args[k] != KD_DEFAULTS[k]
    ]
    if given:
        which = "" if args["kd_unlabeled_terms"] else " (the default)"
        verb = "sets" if len(given) == 1 else "set"
        raise ValueError(
            f"{', '.join(given)} {verb} the pseudo-labels of unlabelled images, but kd_unlabeled_terms={terms}{which} "
            f"takes none: add kd_unlabeled_terms=pseudo (or dense+pseudo), or drop {' '.join(given)}"
        )


def check_before_setup(given: Mapping[str, Any]) -> None:
    """Checks that need no dataset or model, run before the stock trainer creates directories or loads anything.

    Args:
        given (Mapping[str, Any]): The train arguments as given (defaults and overrides merged).

    Raises:
        ValueError | FileNotFoundError: Naming the setting and the fix.
    """
    from ultralytics_kd.compat import require
    from ultralytics_kd.deploy.int8 import is_int8

    check_kd_args(given)
    if given.get("resume"):
        return  # the teacher and settings come from the checkpoint; they are checked once it is read
    teacher, weights = given.get("teacher"), given.get("kd_teacher_weights")
    if not teacher:
        why = "; unlabeled= images learn from the teacher's outputs alone" if given.get("unlabeled") else ""
        raise ValueError(f"KDTrainer needs a teacher: pass teacher=path/to/teacher.pt (a trained detection model){why}")
    epochs, closed = given.get("epochs"), given.get("close_mosaic")
    if given.get("kd_off_last") and isinstance(epochs, int) and isinstance(closed, int) and 0 < epochs <= closed:
        raise ValueError(
            f"kd_off_last=True stops distilling in the last close_mosaic={closed} epochs, which is every epoch of "
            f"this {epochs}-epoch run: set close_mosaic below {epochs}, or kd_off_last=False"
        )
    if given.get("unlabeled") and given.get("rect"):
        raise ValueError(
            "rect=True gives each labelled batch its own shape, and unlabelled images join every batch at imgsz: "
            "drop rect=True (or unlabeled=)"
        )
    if weights and Path(teacher).suffix not in {".yaml", ".yml"}:
        raise ValueError(
            f"teacher='{teacher}' is a checkpoint, which carries its own weights, and kd_teacher_weights='{weights}' "
            f"fills only a YAML teacher. Pass one file: teacher={weights}, or teacher=model.yaml "
            f"kd_teacher_weights={weights}"
        )
    if is_int8(given.get("quantize")):
        require("qat", "train quantize=8 (QAT)")
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


def check_compile(compile: Any, start_mode: str) -> None:
    """Refuse ``compile=`` for a graft start, once ``choose_start`` has decided it and before any batch.

    The graft stage records the student's backbone outputs with forward hooks on every batch (``FeatureRecorder``),
    which a compiled graph does not see. A mimic stage reads the Detect inputs without hooks, so it compiles.

    Raises:
        ValueError: Naming both fixes.
    """
    if compile and start_mode == "graft":
        raise ValueError(
            f"compile={compile} is not supported with a graft start (kd_init=graft, or auto choosing it): its stage "
            f"hooks the student's backbone layers on every batch, which breaks the compiled graph. Set kd_init=mimic "
            f"(or none) to keep compile, or set compile=False"
        )


def _own_data(data) -> bool:
    """A ``data=`` the user chose: set, and not Ultralytics' fallback sample set unless that exists locally."""
    from ultralytics.cfg import TASK2DATA

    return bool(data) and (str(data) != TASK2DATA["detect"] or Path(str(data)).is_file())


@contextmanager
def stock_args(args: Any) -> Iterator[Any]:
    """Hide the ``teacher``/``kd_*`` attributes of ``args`` for a block that re-checks them against stock keys.

    Validators rebuild their config from a copy of the trainer's args with the strict stock key check; they need no
    distillation settings, so they get none, and the trainer's args keep them.
    """
    saved = {k: args.__dict__.pop(k) for k in KD_DEFAULTS if k in args.__dict__}
    try:
        yield args
    finally:
        args.__dict__.update(saved)
