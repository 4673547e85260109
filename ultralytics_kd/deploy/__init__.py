"""Deployment: engine-export checks around Ultralytics' TensorRT path, and runners for the exported files."""

from ultralytics_kd.deploy.runner import EngineRunner, OnnxRunner, read_engine_header
from ultralytics_kd.deploy.trt import INSTALL_HINT, install_export_hook, precision_api, preflight, require_tensorrt

__all__ = [
    "INSTALL_HINT",
    "EngineRunner",
    "OnnxRunner",
    "install_export_hook",
    "precision_api",
    "preflight",
    "read_engine_header",
    "require_tensorrt",
]
