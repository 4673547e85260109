"""Blocks, the block registry and the fusion hook."""

from ultralytics_kd.nn.registry import REGISTRY, install, register_block

__all__ = ["REGISTRY", "install", "register_block"]
