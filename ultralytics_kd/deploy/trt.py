"""TensorRT export on top of Ultralytics' own ``format="engine"`` path: checks first, then a stamp in the header.

Ultralytics already builds engines (ONNX -> TensorRT, ``quantize=16|8``, ``dynamic``, ``batch``, ``workspace``,
``simplify``, ``data`` for INT8) and writes its metadata as a length-prefixed JSON header ahead of the engine. The
plugin adds two things around that path and changes nothing inside it:

1. ``preflight`` fails before the ONNX export with a message naming the fix (no CUDA, no ``tensorrt``, INT8 without
   calibration data, TensorRT 11 without NVIDIA ModelOpt, DLA on TensorRT 11), where the stock path would fail deep
   inside a build or try to download (the default INT8 calibration set).
2. ``stamp`` adds the TensorRT version and the GPU to the header, so :class:`ultralytics_kd.deploy.EngineRunner`
   can refuse an engine built elsewhere with a readable reason instead of a failed deserialisation.

Precision API by TensorRT version (what ``precision_api`` reports):

- TensorRT 8.5-10: FP16/INT8 through builder flags; INT8 calibrates with an ``IInt8Calibrator`` over ``data=``.
- TensorRT 11: strongly typed only; the flags and calibrators are gone, so Ultralytics bakes precision into the ONNX
  graph with NVIDIA ModelOpt (FP16 AutoCast, INT8 explicit Q/DQ) before the build; DLA is not available.
- TensorRT < 8.5: not supported by the runner (it uses the named-tensor API); Ultralytics itself can still load them.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from ultralytics.engine.exporter import Exporter
from ultralytics.utils import LOGGER

from ultralytics_kd.deploy.int8 import is_int8

__all__ = ["INSTALL_HINT", "install_export_hook", "precision_api", "preflight", "require_tensorrt", "stamp"]

INSTALL_HINT = 'pip install "ultralytics-kd[trt]"'
ENGINE_FORMATS = {"engine", "tensorrt", "trt"}


def require_tensorrt():
    """Import and return ``tensorrt``, or raise an ImportError that names the install command."""
    try:
        import tensorrt
    except ImportError as e:
        raise ImportError(f"TensorRT is not installed; {INSTALL_HINT} (needs an NVIDIA GPU and driver)") from e
    return tensorrt


def _major_minor(version: str) -> tuple[int, int]:
    """'10.13.3.9' -> (10, 13)."""
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def precision_api(version: str) -> dict:
    """Say how a TensorRT version takes FP16 and INT8, and what it cannot do.

    Args:
        version (str): A TensorRT version string, e.g. ``tensorrt.__version__``.

    Returns:
        (dict): ``{"fp16": how, "int8": how, "dla": bool, "runner": bool}`` where ``how`` is ``"builder-flag"``,
            ``"calibrator"``, ``"modelopt-qdq"`` or ``"modelopt-autocast"``; ``runner`` says whether
            :class:`~ultralytics_kd.deploy.EngineRunner` can run its engines.
    """
    major, minor = _major_minor(version)
    if major >= 11:
        return {"fp16": "modelopt-autocast", "int8": "modelopt-qdq", "dla": False, "runner": True}
    return {"fp16": "builder-flag", "int8": "calibrator", "dla": True, "runner": (major, minor) >= (8, 5)}


def preflight(args) -> None:
    """Check an engine export's arguments and this machine before any work; raise with the fix in the message.

    Args:
        args (SimpleNamespace | IterableSimpleNamespace): The exporter's arguments (``format``, ``device``,
            ``quantize``, ``data``).

    Raises:
        RuntimeError: No CUDA device.
        ImportError: ``tensorrt`` missing, or ModelOpt missing where TensorRT 11 needs it for FP16/INT8.
        ValueError: INT8 without ``data=``, or DLA on TensorRT 11.
    """
    if str(getattr(args, "format", "")).lower() not in ENGINE_FORMATS:
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            "format=engine needs an NVIDIA GPU and CUDA, and none is visible to torch here; export on the machine "
            "that will run the engine (TensorRT engines are specific to the GPU and TensorRT version), or use "
            "format=onnx here"
        )
    trt = require_tensorrt()
    quantize = getattr(args, "quantize", None)
    if is_int8(quantize) and not getattr(args, "data", None):  # 8, "int8" and "w8a8" alike
        raise ValueError(
            "format=engine quantize=8 calibrates INT8 ranges on your images; pass data=your_data.yaml (its val split "
            "is used). The stock fallback would download a sample set, which this plugin does not allow"
        )
    api = precision_api(trt.__version__)
    if quantize in (8, 16) and api["fp16"].startswith("modelopt") and importlib.util.find_spec("modelopt") is None:
        raise ImportError(
            f"TensorRT {trt.__version__} is strongly typed: quantize={quantize} is baked into the ONNX graph with "
            "NVIDIA ModelOpt before the build; pip install 'nvidia-modelopt[onnx]', or use TensorRT 10's builder flags"
        )
    if "dla" in str(getattr(args, "device", "")) and not api["dla"]:
        raise ValueError(f"DLA is not available in TensorRT {trt.__version__}; build with TensorRT 10 for DLA")


def stamp(exporter: Exporter) -> None:
    """``on_export_start`` callback: add TensorRT version and GPU to an engine's header metadata."""
    if str(exporter.args.format).lower() not in ENGINE_FORMATS:
        return
    import tensorrt

    device = exporter.device if exporter.device.type == "cuda" else torch.device("cuda:0")
    major, minor = torch.cuda.get_device_capability(device)
    exporter.metadata["tensorrt"] = tensorrt.__version__
    exporter.metadata["gpu"] = torch.cuda.get_device_name(device)
    exporter.metadata["compute_capability"] = f"{major}.{minor}"


def install_export_hook() -> None:
    """Wrap ``Exporter.__call__`` once: INT8 ONNX exports run ``int8.export_preflight`` first, engine exports run
    :func:`preflight` first and :func:`stamp` their header, and the export runs in ``int8.export_scope`` (the INT8 step
    widens its scope for a plugin student only)."""
    if getattr(Exporter.__call__, "_ultralytics_kd", False):
        return
    stock_call = Exporter.__call__

    @functools.wraps(stock_call)
    def __call__(self, model=None):
        from ultralytics_kd.deploy.int8 import export_preflight, export_scope

        export_preflight(self.args, model)
        if str(self.args.format).lower() in ENGINE_FORMATS:
            preflight(self.args)
            if stamp not in self.callbacks["on_export_start"]:
                self.callbacks["on_export_start"].append(stamp)
        with export_scope(model):
            return stock_call(self, model)

    __call__._ultralytics_kd = True
    Exporter.__call__ = __call__
    LOGGER.debug("ultralytics-kd: engine export preflight installed")
