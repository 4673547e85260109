"""A picture of predictions: the same images, one column per model (ground truth first), boxes drawn by Ultralytics.

Boxes and labels come from Ultralytics' own ``Results.plot()``, so they look as ``yolo predict`` draws them. Each image
is enlarged to a ``tile``-pixel square before drawing, so the labels stay legible on small inputs, and the tiles are
joined with NumPy under a strip of column titles written by OpenCV: nothing here touches matplotlib or its global
state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.data.utils import img2label_paths
from ultralytics.engine.results import Results

TITLE_PX = 28  # height of the strip of column titles above the tiles


def ground_truth(images: Sequence[str | Path], names: Mapping[int, str]) -> list[Results]:
    """The labelled boxes of each image as ``Results`` (confidence 1), read from its YOLO label file.

    Args:
        images (Sequence[str | Path]): Image files of a YOLO-format dataset (``images/...`` beside ``labels/...``).
        names (Mapping[int, str]): Class names by id.

    Returns:
        (list[Results]): One per image; an image without a label file has no boxes.
    """
    out = []
    for im, lb in zip(images, img2label_paths([str(p) for p in images])):
        img = cv2.imread(str(im))
        h, w = img.shape[:2]
        rows = np.loadtxt(lb, ndmin=2, dtype=np.float32) if Path(lb).is_file() else np.zeros((0, 5), np.float32)
        cls, (cx, cy, bw, bh) = rows[:, 0], rows[:, 1:5].T
        xyxy = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
        boxes = np.concatenate([xyxy, np.ones_like(cls)[:, None], cls[:, None]], 1)
        out.append(Results(img, str(im), dict(names), boxes=torch.from_numpy(boxes)))
    return out


def plot_gallery(
    columns: Mapping[str, Sequence[Results]], out: str | Path, tile: int = 256, no_conf: Sequence[str] = ()
) -> Path:
    """Draw each column's results on its images and tile them: one row per image, one column per entry.

    Args:
        columns (Mapping[str, Sequence[Results]]): Column title -> results for the same images, in the same order.
        out (str | Path): PNG file to write.
        tile (int): Side of each square tile in pixels; images are scaled to fit it (aspect kept, padded grey).
        no_conf (Sequence[str]): Titles of the columns drawn without confidences (e.g. the ground truth).

    Returns:
        (Path): The written file, ``TITLE_PX + rows * tile`` pixels high and ``len(columns) * tile`` wide.
    """
    rows = {len(v) for v in columns.values()}
    if len(rows) != 1:
        raise ValueError(f"every column needs the same images; got {sorted(rows)} results per column")
    grid = np.vstack(
        [
            np.hstack([_tile(col[i], tile, conf=title not in no_conf) for title, col in columns.items()])
            for i in range(rows.pop())
        ]
    )
    header = np.full((TITLE_PX, grid.shape[1], 3), 255, np.uint8)
    for j, title in enumerate(columns):
        org = (j * tile + 6, TITLE_PX - 9)
        cv2.putText(header, title, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    out = Path(out)
    cv2.imwrite(str(out), np.vstack([header, grid]))
    return out


def _tile(r: Results, tile: int, conf: bool) -> np.ndarray:
    """One result drawn on its image enlarged to fit a ``tile`` square (boxes scaled with it), padded to the square."""
    h, w = r.orig_img.shape[:2]
    s = tile / max(h, w)
    img = cv2.resize(r.orig_img, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
    data = r.boxes.data.clone() if r.boxes is not None else torch.zeros((0, 6))
    data[:, :4] *= s
    drawn = Results(img, r.path, r.names, boxes=data).plot(conf=conf, line_width=1)
    square = np.full((tile, tile, 3), 114, np.uint8)
    square[: drawn.shape[0], : drawn.shape[1]] = drawn
    return square
