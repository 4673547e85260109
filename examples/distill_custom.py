"""Distill your own dataset: your data.yaml, your trained teacher checkpoint, a student YAML from cfg/models.

    python examples/distill_custom.py --data path/to/data.yaml --teacher path/to/teacher.pt --epochs 100

The same from the shell:
    yolo-kd train model=cfg/models/yolov9-tiny-shufflev2.yaml teacher=teacher.pt data=data.yaml epochs=100
"""

import argparse
from pathlib import Path

from ultralytics import YOLO

from ultralytics_kd import KDTrainer

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="dataset YAML (Ultralytics layout)")
    p.add_argument("--teacher", required=True, help="trained Ultralytics detection checkpoint (.pt)")
    p.add_argument(
        "--student", default=str(Path(__file__).parents[1] / "cfg" / "models" / "yolov9-tiny-shufflev2.yaml")
    )
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--recipe", default="default", help="kd_recipe: default, seed, or terms joined by '+'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--project", default=None, help="runs folder (Ultralytics default: runs/detect)")
    a = p.parse_args()
    YOLO(a.student).train(
        trainer=KDTrainer,
        teacher=a.teacher,
        data=a.data,
        epochs=a.epochs,
        imgsz=a.imgsz,
        kd_recipe=a.recipe,
        device=a.device,
        batch=a.batch,
        project=a.project,
    )
