"""Training engine: the distillation trainer and the resume guard (imported on ``import ultralytics_kd``)."""

__all__ = ["KDTrainer"]


def __getattr__(name: str):
    """Import the trainer lazily: ``import ultralytics_kd`` installs the resume guard from here and stays cheap."""
    if name == "KDTrainer":
        from ultralytics_kd.engine.trainer import KDTrainer

        return KDTrainer
    raise AttributeError(f"module 'ultralytics_kd.engine' has no attribute '{name}'")
