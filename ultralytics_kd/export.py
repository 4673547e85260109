"""ONNX simplification with either simplifier: onnxslim (what Ultralytics' exporter runs) or onnxsim (the seeds').

``model.export(format="onnx", simplify=True)`` already runs onnxslim inside Ultralytics. To use onnxsim instead, export
with ``simplify=False`` and call :func:`simplify_onnx` with ``backend="onnxsim"``.

Examples:
    >>> from ultralytics import YOLO
    >>> from ultralytics_kd.export import simplify_onnx
    >>> f = YOLO("cfg/models/yolov9-tiny-gelan-rep.yaml").export(format="onnx", simplify=False)
    >>> simplify_onnx(f, backend="auto")  # onnxslim if installed, else onnxsim; returns the one that ran
    'onnxslim'
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ultralytics.utils import LOGGER

__all__ = ["BACKENDS", "simplify_onnx"]

BACKENDS = ("onnxslim", "onnxsim")  # order of preference for backend="auto"


def simplify_onnx(path: str | Path, backend: str = "auto") -> str:
    """Simplify an ONNX file in place and say which simplifier ran.

    Args:
        path (str | Path): The ONNX file.
        backend (str): ``"auto"`` (the first installed of :data:`BACKENDS`), ``"onnxslim"`` or ``"onnxsim"``.

    Returns:
        (str): The simplifier that ran.

    Raises:
        ValueError: Unknown backend.
        ImportError: The requested simplifier (or, for "auto", any) is not installed; the message names the install.
        RuntimeError: onnxsim could not validate its simplified graph (the file is left unchanged).
    """
    import onnx

    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend={backend!r}; use 'auto', 'onnxslim' or 'onnxsim'")
    for name in BACKENDS if backend == "auto" else (backend,):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        model = onnx.load(str(path))
        if name == "onnxslim":
            simplified = module.slim(model)
        else:
            simplified, ok = module.simplify(model)
            if not ok:
                raise RuntimeError(f"onnxsim could not check the simplified graph of {path}; the file is unchanged")
        onnx.save(simplified, str(path))
        LOGGER.info(f"ONNX: simplified {path} with {name} {getattr(module, '__version__', '')}")
        return name
    extra = 'pip install "ultralytics-kd[onnxsim]"' if backend == "onnxsim" else "pip install onnxslim"
    raise ImportError(f"no ONNX simplifier for backend={backend!r} is installed; {extra}")
