"""``yolo-kd``: Ultralytics' ``yolo`` command with distillation and the plugin's own modes.

- ``yolo-kd train model=... data=... teacher=... kd_T=2``: with a ``teacher`` (or a ``cfg=`` file that sets one, or a
  resumed distillation checkpoint) trains with ``KDTrainer``; without one, trains exactly like ``yolo train``.
- ``yolo-kd synth|demo|report key=value ...``: the plugin's modes, imported only when called.
- Everything else (``val``, ``predict``, ``export``, ``benchmark``, ``help``, ``checks``, ``settings`` ...) goes to
  Ultralytics' own entrypoint, with the plugin imported so that its blocks are registered.

Examples:
    $ yolo-kd train model=yolov9t.yaml data=data.yaml teacher=teacher.pt epochs=100 kd_recipe=default
    $ yolo-kd train model=yolov9-tiny-shufflev2.yaml data=data.yaml teacher=teacher.pt  # a packaged student YAML
    $ yolo-kd export model=runs/detect/train/weights/best.pt format=onnx
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from typing import Any

PLUGIN_MODES = {
    "synth": "ultralytics_kd.data.synth:cli",
    "demo": "ultralytics_kd.demo:cli",
    "report": "ultralytics_kd.report:cli",
}

HELP = """yolo-kd: Ultralytics YOLO with knowledge distillation (ultralytics-kd)

    yolo-kd train model=yolov9t.yaml data=data.yaml teacher=teacher.pt kd_recipe=default kd_T=2
    yolo-kd train cfg=my_kd.yaml model=yolov9t.yaml data=data.yaml     # settings from a copy of cfg/kd.yaml
    yolo-kd synth out=datasets/synth n=200        # synthetic dataset
    yolo-kd demo                                  # teacher -> scratch -> distilled -> fused export, end to end
    yolo-kd report run=runs/detect/train          # report of a run

Distillation keys (defaults in ultralytics_kd/cfg/kd.yaml): {keys}
Every other mode and key is Ultralytics' own; its help follows.
"""


def _parse(args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split ``key=value`` pairs (values typed as Ultralytics types them) from bare words."""
    from ultralytics.cfg import merge_equals_args, parse_key_value_pair

    words, pairs = [], {}
    for a in merge_equals_args(args):
        a = a.removeprefix("--")
        if "=" in a:
            k, v = parse_key_value_pair(a)
            pairs[k] = v
        else:
            words.append(a)
    return words, pairs


def _run_plugin_mode(mode: str, args: list[str]) -> Any:
    """Import the mode's module only now (it may be optional or not written yet) and hand it the parsed pairs."""
    module, func = PLUGIN_MODES[mode].split(":")
    try:
        fn = getattr(import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise SystemExit(
            f"yolo-kd {mode} is not available in this installation: importing {PLUGIN_MODES[mode]} failed "
            f"({type(e).__name__}: {e}). Reinstall ultralytics-kd, or use 'yolo-kd train|val|predict|export ...'"
        ) from e
    words, pairs = _parse(args)
    if words:
        raise SystemExit(f"yolo-kd {mode} takes key=value arguments only, got {words}")
    return fn(pairs)


def _ultralytics(args: list[str]) -> None:
    """Run Ultralytics' own CLI on ``args``.

    Its entrypoint reads the module-level ``ARGV`` captured at import (its ``debug`` string is split on spaces, which
    would break quoted values), so that one global is swapped for the call.
    """
    import ultralytics.cfg as ucfg

    saved = ucfg.ARGV
    ucfg.ARGV = ["yolo", *args]
    try:
        ucfg.entrypoint()
    finally:
        ucfg.ARGV = saved


def _kd_resume_path(pairs: dict[str, Any]) -> Path | None:
    """The checkpoint a ``resume`` points at (``resume=``, ``model=`` or the latest run), if KDTrainer wrote it."""
    from ultralytics_kd.engine.resume import kd_checkpoint_state, resume_path

    if not pairs.get("resume"):
        return None
    given = pairs["resume"] if isinstance(pairs["resume"], (str, Path)) else pairs.get("model")
    path = resume_path(given or True)
    return path if kd_checkpoint_state(path) is not None else None


def _train(args: list[str]) -> Any:
    """``train`` with a teacher goes through KDTrainer; without one, through Ultralytics untouched."""
    from ultralytics.cfg import TASKS, check_cfg, check_dict_alignment
    from ultralytics.utils import DEFAULT_CFG_DICT, YAML
    from ultralytics.utils.checks import check_yaml

    from ultralytics_kd.distill.settings import KD_DEFAULTS, check_kd_args

    words, pairs = _parse(args)
    if pairs.get("cfg"):
        pairs = {**YAML.load(check_yaml(pairs.pop("cfg"))), **pairs}
    task = next((w for w in words if w in TASKS), None)
    for w in words:
        if w in DEFAULT_CFG_DICT and isinstance(DEFAULT_CFG_DICT[w], bool) or w == "resume":
            pairs[w] = True  # bare boolean flags, as in 'yolo train ... resume'
        elif w not in {"train", task}:
            raise SyntaxError(f"'{w}' is not a valid yolo-kd train argument; use key=value, e.g. epochs=10")
    check_kd_args(pairs)  # first: a mistyped kd_* key gets one line, not the stock help before it
    kd_given = sorted(k for k in pairs if k in KD_DEFAULTS and pairs[k] != KD_DEFAULTS[k])
    resumed = _kd_resume_path(pairs)
    if resumed is not None:  # 'yolo-kd train resume' alone continues the latest run, as 'yolo train resume' does
        pairs.setdefault("model", str(resumed))
    elif not pairs.get("teacher"):
        if kd_given:
            raise ValueError(f"{kd_given} set but no teacher: add teacher=path/to/teacher.pt, or drop the kd_* keys")
        return _ultralytics(args)
    check_dict_alignment({**DEFAULT_CFG_DICT, **KD_DEFAULTS}, pairs)  # typos fail here, with suggestions
    try:  # the stock value-type check, here so that its TypeError is a user's error and not an internal one
        check_cfg({k: v for k, v in pairs.items() if k not in KD_DEFAULTS})
    except TypeError as e:
        raise ValueError(str(e)) from e
    if not pairs.get("model"):
        raise ValueError("yolo-kd train needs the student: model=yolov9t.yaml (or a .pt to fine-tune)")
    from ultralytics import YOLO

    from ultralytics_kd.engine.trainer import KDTrainer

    return YOLO(pairs.pop("model"), task=task).train(trainer=KDTrainer, **pairs)


def _packaged_model(arg: str) -> str:
    """``model=<name>.yaml`` naming a student YAML shipped in the package (and no file here) becomes its path."""
    from ultralytics_kd.zoo import list_models, model_yaml

    key, _, value = arg.partition("=")
    if key.removeprefix("--") == "model" and value.endswith(".yaml") and not Path(value).exists():
        if Path(value).stem in list_models() and Path(value).name == value:
            return f"{key}={model_yaml(value)}"
    return arg


def entrypoint(args: list[str] | str | None = None) -> Any:
    """Run ``yolo-kd`` on ``args`` (default: ``sys.argv[1:]``).

    Args:
        args (list[str] | str, optional): Command-line words, e.g. ``["train", "model=yolov8n.yaml", ...]``, or one
            space-separated string.

    Returns:
        (Any): What the mode returns (training metrics, a plugin mode's result), for in-process use.
    """
    import ultralytics_kd  # noqa: F401  (registers the plugin's blocks before any model is parsed)

    args = args.split() if isinstance(args, str) else list(sys.argv[1:] if args is None else args)
    args = [_packaged_model(a) for a in args]
    mode = next((a for a in args if "=" not in a), None)
    if mode in PLUGIN_MODES:
        return _run_plugin_mode(mode, [a for a in args if a != mode])
    if mode in {"help", "-h", "--help"} or not args:
        from ultralytics_kd.distill.settings import KD_DEFAULTS

        print(HELP.format(keys=", ".join(KD_DEFAULTS)))
        return _ultralytics(args)
    if "train" in args:
        return _train(args)
    return _ultralytics(args)


# Errors that name a bad input and its fix: one line is the whole message. Anything else keeps its traceback: a KeyError
# or TypeError is a bug (the stock value-type check's TypeError is turned into a ValueError where it is called).
_USER_ERRORS = (ValueError, FileNotFoundError, SyntaxError)


def main() -> int:
    """Console-script entry: run ``yolo-kd`` and return the process exit status, as the stock ``yolo`` does.

    ``entrypoint`` returns metrics or paths for in-process use; a console script handing that object to ``sys.exit``
    would print it and exit 1 after a successful run, so this wrapper returns 0 instead. Bad input exits 1 with its
    message on stderr (no Python objects, no traceback); ``SystemExit`` keeps its own status.

    Returns:
        (int): 0 on success, 1 on bad input.
    """
    try:
        entrypoint()
    except _USER_ERRORS as e:
        print(f"yolo-kd: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
