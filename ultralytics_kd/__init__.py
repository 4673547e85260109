"""ultralytics-kd: knowledge distillation, re-parameterisable blocks and fused export for Ultralytics YOLO.

Importing the package registers its blocks with Ultralytics' model parser and installs the fusion and safe-load hooks,
so plain Ultralytics code (``YOLO("student.yaml")``, ``model.fuse()``, ``model.export()``) understands them, and the
resume guard, so that no stock path resumes a distillation checkpoint without its teacher.
"""

from ultralytics_kd import compat  # noqa: F401  (first: stops an unsupported Ultralytics with one line)
from ultralytics_kd.engine.resume import install_resume_guard
from ultralytics_kd.nn import install, register_block
from ultralytics_kd.zoo import list_models, model_yaml

__version__ = "0.1.0"
__all__ = ["KDDetectionLoss", "KDTrainer", "__version__", "install", "list_models", "model_yaml", "register_block"]

install()
install_resume_guard()


def __getattr__(name: str):
    """Import the training side lazily so that ``import ultralytics_kd`` stays cheap for inference and export."""
    if name == "KDTrainer":
        from ultralytics_kd.engine.trainer import KDTrainer

        return KDTrainer
    if name == "KDDetectionLoss":
        from ultralytics_kd.distill.criterion import KDDetectionLoss

        return KDDetectionLoss
    raise AttributeError(f"module 'ultralytics_kd' has no attribute '{name}'")
