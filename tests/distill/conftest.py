"""Shared fixtures for the distillation, engine and CLI tests: a tiny synthetic dataset and a 1-epoch teacher.

Everything is built from YAML and synthetic images (no downloads) and kept tiny so the suite runs on 2 CPU cores. The
session fixtures cache on disk under pytest's base temp dir, so other test folders that load this file (see
``tests/engine/conftest.py``) reuse the same dataset and teacher instead of training another.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

# distill fixtures
TINY = dict(imgsz=64, batch=4, nbs=4, workers=0, plots=False, device="cpu", amp=False, seed=0, deterministic=False)
NAMES = ("square", "bar")


def make_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: int = 96, names=NAMES) -> Path:
    """Write a YOLO dataset of noisy images with bright squares (class 0) and bars (class 1); return its data.yaml."""
    data = root / "data.yaml"
    if data.exists():
        return data
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            rows = []
            for _ in range(rng.integers(1, 4)):
                c = int(rng.integers(0, len(names)))
                w = int(rng.integers(size // 6, size // 3))
                h = w if c == 0 else max(4, w // 3)
                x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                img[y0 : y0 + h, x0 : x0 + w] = (255, 200, 50) if c == 0 else (50, 200, 255)
                rows.append(f"{c} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), img)
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(rows) + "\n")
    names_yaml = "\n".join(f"  {i}: {n}" for i, n in enumerate(names))
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\ntest: images/val\nnames:\n{names_yaml}\n")
    return data


def save_untrained(cfg: str, path: Path, names=NAMES, nc: int | None = None) -> Path:
    """Save an untrained model built from a YAML as an Ultralytics-style checkpoint (for bad-input and family tests)."""
    import torch
    from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SegmentationModel

    n = nc or len(names)
    cls = ClassificationModel if "-cls" in cfg else SegmentationModel if "-seg" in cfg else DetectionModel
    model = cls(cfg, nc=n, verbose=False)
    model.names = {i: names[i] if i < len(names) else f"c{i}" for i in range(n)}
    torch.save({"model": model.half(), "train_args": {}}, path)
    return path


@pytest.fixture(scope="session")
def data_yaml(tmp_path_factory) -> Path:
    """Two-class synthetic detection dataset (8 train, 4 val images)."""
    return make_dataset(tmp_path_factory.getbasetemp() / "kd_data")


@pytest.fixture(scope="session")
def teacher_pt(data_yaml, tmp_path_factory) -> Path:
    """A yolov8s teacher trained for one epoch on the synthetic data (its mAP is ~0: fine for plumbing tests)."""
    project = tmp_path_factory.getbasetemp() / "kd_teacher"
    weights = project / "t" / "weights" / "last.pt"
    if not weights.exists():
        from ultralytics import YOLO

        YOLO("yolov8s.yaml").train(
            data=str(data_yaml), epochs=1, project=str(project), name="t", exist_ok=True, val=False, **TINY
        )
    return weights


@pytest.fixture(scope="session")
def tiny() -> dict:
    """Train arguments for seconds-long CPU runs."""
    return dict(TINY)


@pytest.fixture(scope="session")
def untrained():
    """``save_untrained(cfg, path, names=..., nc=...)`` to craft teacher checkpoints without training."""
    return save_untrained
