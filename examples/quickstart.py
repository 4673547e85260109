"""Quickstart: the whole job on generated data in about ten minutes on a 2-core CPU, nothing downloaded.

A YOLOv8-s teacher, the ShuffleV2 student from scratch and distilled (mimic stage, then the teacher's head), their
fused ONNX exports, and runs/kd_demo/demo/demo_table.md with the comparison table and predictions.png.

python examples/quickstart.py                 # defaults (same as `yolo-kd demo`)
python examples/quickstart.py epochs=3 n=60   # any demo key=value scales it
"""

import sys

from ultralytics.cfg import smart_value

from ultralytics_kd.demo import run_demo

if __name__ == "__main__":
    overrides = {k: smart_value(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}
    run_demo(**overrides)
