"""Training engine: the distillation trainer."""

from ultralytics_kd.engine.trainer import KDTrainer

__all__ = ["KDTrainer"]
