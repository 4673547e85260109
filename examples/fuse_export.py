"""Fuse a trained student and export it: ONNX anywhere, a TensorRT engine where a GPU and TensorRT are present.

    python examples/fuse_export.py runs/detect/train/weights/best.pt --imgsz 320

model.export() calls model.fuse() first, and importing ultralytics_kd makes fuse() merge every RepVGG branch into
one conv before Ultralytics folds Conv+BN, so the ONNX graph holds plain convs only.
"""

import argparse

import torch
from ultralytics import YOLO

import ultralytics_kd  # noqa: F401  (registers the blocks and the fusion hook)

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("weights", help="trained student checkpoint, or a student YAML for an untrained one")
    p.add_argument("--imgsz", type=int, default=320)
    a = p.parse_args()
    model = YOLO(a.weights)
    print("ONNX:", model.export(format="onnx", imgsz=a.imgsz, simplify=True))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print('TensorRT skipped: not installed (pip install "ultralytics-kd[trt]" on a machine with an NVIDIA GPU)')
    else:
        if torch.cuda.is_available():
            print("TensorRT:", model.export(format="engine", imgsz=a.imgsz, half=True, device=0))
        else:
            print("TensorRT skipped: no CUDA GPU visible to torch")
