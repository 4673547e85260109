"""Every difference between the Ultralytics releases this plugin supports, in one module.

Supported: ``ultralytics>=8.4.104,<8.5`` (the dependency line in ``pyproject.toml`` says the same). The lower end is
the criterion contract the plugin keeps: from 8.4.104 a detection loss returns ``(loss * batch_size, {name: value})``
and the trainer derives its loss columns from that dict, so distillation terms reach the progress bar, results.csv
and the validator's losses with no special case. Releases before it return a fixed three-item tensor whose columns
the trainer names itself; bridging that would mean a second loss-bookkeeping path through the trainer and validator,
not a moved import. 8.3 has a different Detect output altogether (a list of maps, not the dict of boxes, scores and
feats every term reads). ``benchmarks/release_probe.py`` runs the compatibility tests against a list of releases;
its latest table is in the README.

Within the range, a later release adds features that the plugin uses where present and names where absent:

- Reading the metadata header of a TensorRT engine file (stock ``BaseBackend.engine_header``) from 8.4.127: the
  plugin's engine runner (``deploy.EngineRunner``, ``read_engine_header``) needs it; building engines does not.
- Quantization-aware training (``train(quantize=8)``: stock ``prepare_qat`` and ``is_qat``) from 8.4.143. Before it,
  :func:`is_qat` is always False (no stock code can put ModelOpt quantizers into a model) and :func:`require` stops a
  QAT run with the release it needs; post-training INT8 export and TensorRT export work on every supported release.
- Label assignment distillation (``kd_lad``, ``kd_recipe=lad``) from 8.4.180, whose detection loss passes keyword
  arguments through to its assigner (``get_assigned_targets_and_loss(..., **assign_kwargs)``): the plugin hands the
  teacher's predictions to the assigner that way instead of overriding the loss.

Behaviour and signatures that moved within the range:

- A standalone stock validator (``validator(model=m)``) validates a copy of ``m`` from 8.4.140
  (``BaseValidator.get_model``); before, AutoBackend fuses ``m`` in place, which drops an end-to-end head's
  one-to-many branch. :func:`for_validation` hands it a copy where the release does not make one.
- The ONNX INT8 step the exporter calls (``utils.export.onnx.onnx_int8_quantize``): 8.4.80 to 8.4.179 pass it the
  graph's static batch as ``batch=``; :func:`onnx_int8_step` gives the plugin's step the signature the installed
  exporter calls.

Other modules import the names below from here, and test a feature with :func:`has` or :func:`require`, never with
a version comparison of their own.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from copy import deepcopy

import numpy as np
import ultralytics

__all__ = [
    "FEATURES",
    "FOUND",
    "SUPPORTED",
    "UnsupportedUltralytics",
    "check_version",
    "engine_header",
    "for_validation",
    "has",
    "is_qat",
    "onnx_int8_step",
    "require",
]

MINIMUM = "8.4.104"  # the loss-dict contract (see the module docstring)
BELOW = "8.5.0"  # a minor release may move what the plugin hooks (parse_model, fuse, the criterion); tested first
SUPPORTED = f">={MINIMUM},<8.5"
FOUND: str = getattr(ultralytics, "__version__", "unknown")


class UnsupportedUltralytics(ImportError):
    """The installed Ultralytics is outside the range this plugin is tested with."""


def _release(version: str) -> tuple[int, int, int] | None:
    """'8.4.190' -> (8, 4, 190); a pre- or dev-release suffix is ignored ('8.4.200rc1' -> (8, 4, 200)); None if
    unreadable."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def check_version(version: str) -> None:
    """Raise :class:`UnsupportedUltralytics` with a one-line message if ``version`` is outside the supported range.

    Args:
        version (str): An Ultralytics version string, e.g. ``ultralytics.__version__``.

    Raises:
        UnsupportedUltralytics: Naming the version found, the range and the pip command that installs a supported one.

    Examples:
        >>> check_version("8.4.190")
        >>> check_version("8.4.0")
        Traceback (most recent call last):
        ...
        ultralytics_kd.compat.UnsupportedUltralytics: ultralytics-kd needs ultralytics>=8.4.104,<8.5 and found ...
    """
    r = _release(version)
    if r is None or not _release(MINIMUM) <= r < _release(BELOW):
        raise UnsupportedUltralytics(
            f"ultralytics-kd needs ultralytics{SUPPORTED} and found ultralytics {version}; "
            f'fix: pip install "ultralytics{SUPPORTED}"'
        )


ANY_RELEASE = "ULTRALYTICS_KD_ANY_RELEASE"  # =1 skips the check, to see how an unsupported release fails (the probe)
if os.environ.get(ANY_RELEASE) != "1":
    check_version(FOUND)  # before any other ultralytics import: an old release stops here, not at a deep ImportError

from ultralytics.engine import trainer as _trainer  # noqa: E402  (after the version check, on purpose)
from ultralytics.engine.validator import BaseValidator as _BaseValidator  # noqa: E402
from ultralytics.nn.backends.base import BaseBackend as _BaseBackend  # noqa: E402
from ultralytics.utils import torch_utils as _torch_utils  # noqa: E402
from ultralytics.utils.export import onnx as _onnx_export  # noqa: E402
from ultralytics.utils.loss import v8DetectionLoss as _v8DetectionLoss  # noqa: E402

# feature -> the first release that has it (see the module docstring)
FEATURES: dict[str, str] = {"engine_header": "8.4.127", "qat": "8.4.143", "lad": "8.4.180"}
_PRESENT = {
    "engine_header": hasattr(_BaseBackend, "engine_header"),
    "qat": hasattr(_torch_utils, "is_qat") and hasattr(_trainer, "prepare_qat"),
    "lad": any(
        p.kind is p.VAR_KEYWORD
        for p in inspect.signature(_v8DetectionLoss.get_assigned_targets_and_loss).parameters.values()
    ),
}


def has(feature: str) -> bool:
    """Whether the installed Ultralytics has ``feature`` (a key of :data:`FEATURES`)."""
    return _PRESENT[feature]


def require(feature: str, what: str) -> None:
    """Stop ``what`` with the release it needs when the installed Ultralytics lacks ``feature``.

    Args:
        feature (str): A key of :data:`FEATURES`.
        what (str): What was asked for, as the user wrote it, e.g. ``"train quantize=8 (QAT)"``.

    Raises:
        RuntimeError: Naming the release that has the feature and the pip command.
    """
    if not has(feature):
        need = FEATURES[feature]
        raise RuntimeError(
            f"{what} needs ultralytics>={need} and this is ultralytics {FOUND}; "
            f'pip install "ultralytics>={need},<8.5". Everything else in ultralytics-kd works on {FOUND}'
        )


if _PRESENT["qat"]:
    is_qat = _torch_utils.is_qat
else:

    def is_qat(model) -> bool:
        """Whether ``model`` carries stock QAT fake-quantizers: never, on a release without stock QAT."""
        return False


def engine_header(path) -> tuple[int, dict]:
    """Stock ``BaseBackend.engine_header``: byte offset of the serialized engine and its metadata, as stored."""
    require("engine_header", "reading a TensorRT engine file's metadata (EngineRunner, read_engine_header)")
    return _BaseBackend.engine_header(path)


def for_validation(model):
    """``model`` as a standalone stock validator should get it (``validator(model=for_validation(m))``) so that
    validating leaves ``m`` as it was: ``m`` itself where the validator copies it, else a deep copy."""
    return model if hasattr(_BaseValidator, "get_model") else deepcopy(model)


_INT8_STEP_TAKES_BATCH = "batch" in inspect.signature(_onnx_export.onnx_int8_quantize).parameters


def _tiled(transform_fn, batch: int):
    """``transform_fn`` whose calibration arrays are repeated along the first axis to exactly ``batch`` images."""

    def transform(b):
        im = transform_fn(b)
        return im if im.shape[0] == batch else np.tile(im, (-(-batch // im.shape[0]), 1, 1, 1))[:batch]

    return transform


def onnx_int8_step(step):
    """The plugin's ONNX INT8 step in the signature the installed exporter calls.

    Args:
        step (Callable): ``step(stock, onnx_file, output_file, dataset, transform_fn, input_name=, prefix=)``, where
            ``stock`` is the stock step, called the same way.

    Returns:
        (Callable): ``step`` itself, or on a release whose exporter also passes ``batch`` (the graph's static batch, 0
            when dynamic) a wrapper taking it: calibration arrays are tiled up to that batch, which a static graph
            needs and which those releases' calibration reader did for its own callers, and ``stock`` gets it back.
    """
    if not _INT8_STEP_TAKES_BATCH:
        return step

    @functools.wraps(step)
    def with_batch(stock, onnx_file, output_file, dataset, transform_fn, input_name="images", batch=0, prefix=""):
        transform = _tiled(transform_fn, batch) if batch else transform_fn
        stock = functools.partial(stock, batch=batch)
        return step(stock, onnx_file, output_file, dataset, transform, input_name=input_name, prefix=prefix)

    return with_batch
