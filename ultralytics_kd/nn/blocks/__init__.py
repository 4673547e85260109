"""The plugin's blocks, one family per file; importing this package registers them."""

from ultralytics_kd.nn.blocks.rep import RepGELAN, RepVGG
from ultralytics_kd.nn.blocks.shufflenet import ShuffleV2, ShuffleV2Stage

__all__ = ["RepGELAN", "RepVGG", "ShuffleV2", "ShuffleV2Stage"]
