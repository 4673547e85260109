"""Deterministic synthetic detection dataset: textured shapes on cluttered, noisy backgrounds.

Tests, examples and the CPU demo need a detection task with no downloads on which a small student is measurably worse
than a big teacher, so that distillation has something to transfer. Each image holds a handful of labelled shapes
(disc, square, triangle, ring, cross) whose colour is random and whose fill texture only loosely follows the class, so
the class has to be read from the outline; the background is a gradient with blotches, unlabelled distractor strokes,
arcs, elongated ellipses and letters, and sensor-like noise. Objects may overlap, but never so much that less than a
``min_visible`` share of an object stays on top; its label is the box of its full outline.

Every image is drawn from its own random stream ``SeedSequence(seed, spawn_key=(i,))`` with numpy and OpenCV and
written as PNG, so the same arguments give byte-identical files and image ``i`` does not depend on ``n``.

Examples:
    >>> from ultralytics_kd.data import make_synthetic_dataset
    >>> yaml_path = make_synthetic_dataset("datasets/synth", n=200, imgsz=320, seed=0)
    >>> from ultralytics import YOLO
    >>> YOLO("yolov8n.yaml").train(data=yaml_path, epochs=3, imgsz=320)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

CLASSES = ("disc", "square", "triangle", "ring", "cross")  # default label ids, in this order
TEXTURES = ("solid", "stripes", "checker", "dots")
# The texture a class gets with probability ``texture_bias`` (otherwise any): a cue that helps early on, never decides.
_TYPICAL_TEXTURE = {"disc": "solid", "square": "checker", "triangle": "stripes", "ring": "solid", "cross": "dots"}
# Per-class size scale: classes differ a little in typical size, as real categories do.
_SIZE_SCALE = {"disc": 0.9, "square": 1.0, "triangle": 1.1, "ring": 1.15, "cross": 0.9}
DIFFICULTIES = {"easy": 0.0, "normal": 0.5, "hard": 1.0}
MARKER = ".ultralytics_kd_synth.json"
SPLITS = ("train", "val", "test")
UNLABELED = "unlabeled"  # training images whose labels are held back (unlabeled_frac)
_VERSION = 1  # bump whenever the rendering changes, so cached datasets are regenerated rather than reused
_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel shape geometry, so small objects are not snapped to the pixel grid
_MIN_PX = 8  # smallest object diameter in pixels; below this the five outlines are indistinguishable
# Huffman-only PNG: the noise makes LZ77 matching useless, so this is as small as level 6 and twice as fast.
_PNG_FLAGS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
_LETTERS = "abehkmnrsuwz"  # distractor glyphs that resemble none of the classes (no o, x, t, v, l)


@dataclass(frozen=True)
class _Knobs:
    """Rendering parameters for one difficulty in [0, 1] (0 easy, 0.5 normal, 1 hard)."""

    objects: tuple[int, int]  # labelled objects per image, inclusive range
    size: tuple[float, float]  # object diameter as a fraction of imgsz, sampled log-uniformly
    clutter: int  # distractors drawn behind the objects
    foreground: int  # thin distractor strokes drawn over the objects
    noise: float  # std of the additive pixel noise, in grey levels
    blotch: float  # amplitude of the low-frequency background blotches
    texture_bias: float  # probability that an object gets its class' typical texture
    min_contrast: float  # minimum luminance gap between an object and the background under it
    min_visible: float  # minimum share of an object's pixels that must stay unoccluded
    blur: float  # probability of a slight Gaussian blur of the whole image

    @classmethod
    def at(cls, d: float) -> _Knobs:
        """Interpolate every knob linearly between its easy (d=0) and hard (d=1) value."""

        def lerp(a: float, b: float) -> float:
            return a + (b - a) * d

        return cls(
            objects=(1 + round(2 * d), round(lerp(5, 14))),
            size=(lerp(0.09, 0.035), lerp(0.35, 0.22)),
            clutter=round(lerp(4, 28)),
            foreground=round(lerp(0, 5)),
            noise=lerp(3, 18),
            blotch=lerp(15, 45),
            texture_bias=lerp(0.85, 0.25),
            min_contrast=lerp(60, 20),
            min_visible=lerp(0.85, 0.5),
            blur=lerp(0.0, 0.35),
        )


def make_synthetic_dataset(
    out: str | Path = "datasets/synth",
    n: int = 200,
    imgsz: int = 320,
    seed: int = 0,
    val_frac: float = 0.2,
    test_frac: float = 0.1,
    classes: Sequence[str] | str | None = None,
    difficulty: str | float = "normal",
    exist_ok: bool = False,
    unlabeled_frac: float = 0.0,
) -> Path:
    """Write a YOLO-format synthetic detection dataset and return the path of its ``data.yaml``.

    All arguments are checked, and the output folder inspected, before anything is written. A non-empty ``out`` is
    never overwritten silently: without ``exist_ok`` it is refused; with ``exist_ok`` a dataset made by this generator
    (recognised by its marker file) is reused untouched when its parameters match, and regenerated otherwise.

    Args:
        out: Dataset root; gets ``images/{split}``, ``labels/{split}``, ``data.yaml`` and a marker file.
        n: Total number of images, 1 to 1e6.
        imgsz: Square image side in pixels, 32 to 4096.
        seed: Non-negative seed; the same arguments give byte-identical images and labels.
        val_frac: Share of images in the val split (at least one image; Ultralytics validates on it).
        test_frac: Share of images in the test split; 0 omits the split.
        classes: Subset of ``CLASSES`` (a sequence or a comma-separated string), in label-id order; None for all.
        difficulty: "easy", "normal", "hard" or a float in [0, 1]; sets object count and size, clutter, noise,
            occlusion, contrast and how loosely texture follows the class.
        exist_ok: Reuse or regenerate an existing dataset made by this generator instead of refusing.
        unlabeled_frac: Share of the training images whose labels are held back, in [0, 1): they go to
            ``images/unlabeled`` (named by the data YAML's ``unlabeled`` key, which ``KDTrainer`` reads), their labels
            to ``labels_hidden/unlabeled``, where no loader finds them (for scoring a run with them as a ceiling).

    Returns:
        (Path): Absolute path of ``out/data.yaml``, ready for ``YOLO(...).train(data=...)``.

    Raises:
        ValueError: On an argument out of range, naming it and the accepted range.
        FileExistsError: When ``out`` is non-empty and may not be reused or overwritten.
        NotADirectoryError: When ``out`` or one of its parents is a file.
        PermissionError: When ``out`` cannot be written.
    """
    params = _check_params(n, imgsz, seed, val_frac, test_frac, classes, difficulty, unlabeled_frac)
    out = Path(out).expanduser().resolve()
    state = _inspect_out(out, params, exist_ok)
    if state == "reuse":
        yaml_path = out / "data.yaml"
        if _read_yaml_path(yaml_path) != str(out):  # the folder was moved: only the absolute path is stale
            _write_data_yaml(out, params)
        return yaml_path
    _check_writable(out, params)
    if state == "regenerate":
        _remove_generated(out)

    out.mkdir(parents=True, exist_ok=True)
    marker = {"generator": __name__, "params": params, "complete": False}
    _write_json(out / MARKER, marker)  # written first, so an interrupted run is still recognised and regenerated
    counts = _generate(out, params)
    yaml_path = _write_data_yaml(out, params)
    _write_json(out / MARKER, {**marker, "complete": True, "counts": counts})
    return yaml_path


def render_image(
    seed: int, index: int, imgsz: int = 320, classes: Sequence[str] | None = None, difficulty: str | float = "normal"
) -> tuple[np.ndarray, np.ndarray]:
    """Render image ``index`` of the dataset with ``seed``, exactly as ``make_synthetic_dataset`` writes it.

    Args:
        seed: Dataset seed.
        index: Image index; each index has its own random stream.
        imgsz: Square image side in pixels.
        classes: Class names in label-id order; None for all of ``CLASSES``.
        difficulty: "easy", "normal", "hard" or a float in [0, 1].

    Returns:
        (np.ndarray): BGR uint8 image of shape (imgsz, imgsz, 3).
        (np.ndarray): Labels of shape (k, 5) float32: class id, then x1, y1, x2, y2 in pixels.
    """
    names = _check_classes(classes)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    return _render(rng, imgsz, names, _Knobs.at(_difficulty_value(difficulty)))


def cli(args: dict[str, Any]) -> Path:
    """Entry point of ``yolo-kd synth key=value ...``: check the parsed values, generate, print a summary.

    Args:
        args: ``key=value`` pairs as ``yolo-kd`` parses them (Ultralytics' own typing: ``n=200`` is an int,
            ``exist_ok=true`` a bool, ``classes=none`` None). Keys are the arguments of ``make_synthetic_dataset``;
            its checks name any value out of range or of the wrong type.

    Returns:
        (Path): Path of the written (or reused) ``data.yaml``.

    Examples:
        $ yolo-kd synth out=datasets/synth n=200 imgsz=320 seed=0 difficulty=hard
    """
    known = (
        "out",
        "n",
        "imgsz",
        "seed",
        "val_frac",
        "test_frac",
        "classes",
        "difficulty",
        "exist_ok",
        "unlabeled_frac",
    )
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"unknown synth argument(s) {unknown}; valid keys are {', '.join(known)}")
    kwargs = dict(args)
    for key in ("n", "imgsz", "seed"):  # n=1e3 arrives as 1000.0
        if isinstance(kwargs.get(key), float) and kwargs[key].is_integer():
            kwargs[key] = int(kwargs[key])
    if "exist_ok" in kwargs and not isinstance(kwargs["exist_ok"], bool):
        raise ValueError(f"exist_ok={kwargs['exist_ok']!r} must be true or false")
    if kwargs.get("classes") == "all":
        kwargs["classes"] = None
    if "out" in kwargs and not isinstance(kwargs["out"], (str, Path)):
        kwargs["out"] = str(kwargs["out"])  # a folder named out=2024 arrives as an int
    yaml_path = make_synthetic_dataset(**kwargs)
    counts = json.loads((yaml_path.parent / MARKER).read_text())["counts"]
    images = ", ".join(f"{split} {k}" for split, k in counts["images"].items())
    boxes = ", ".join(f"{name} {k}" for name, k in counts["boxes"].items())
    print(f"Synthetic dataset in {yaml_path.parent} (use data={yaml_path})")
    print(f"images: {images} | boxes: {boxes}")
    return yaml_path


# ------------------------------------------------------------------------------------------------ argument checks


def _check_params(n, imgsz, seed, val_frac, test_frac, classes, difficulty, unlabeled_frac=0.0) -> dict[str, Any]:
    """Validate the generation arguments and return them normalised, as stored in the marker file."""
    for name, value, lo, hi in (("n", n, 1, 1_000_000), ("imgsz", imgsz, 32, 4096), ("seed", seed, 0, 2**63 - 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}={value!r} must be a whole number between {lo} and {hi}")
        if not lo <= value <= hi:
            raise ValueError(f"{name}={value} is out of range; use a whole number between {lo} and {hi}")
    for name, value in (("val_frac", val_frac), ("test_frac", test_frac), ("unlabeled_frac", unlabeled_frac)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{name}={value!r} must be a fraction in [0, 1), e.g. {name}=0.2")
    if val_frac + test_frac >= 1:
        raise ValueError(f"val_frac + test_frac = {val_frac + test_frac:g} leaves no training images; keep it below 1")
    n_val, n_test = _split_sizes(int(n), val_frac, test_frac)
    if n_val == 0:
        raise ValueError("val_frac=0 gives no val images, but Ultralytics validates on the val split; use val_frac>0")
    if n - n_val - n_test < 1:
        raise ValueError(
            f"n={n} with val_frac={val_frac} and test_frac={test_frac} leaves no training images "
            f"({n_val} val, {n_test} test); raise n or lower the fractions"
        )
    if unlabeled_frac and n - n_val - n_test - _unlabeled_size(n - n_val - n_test, unlabeled_frac) < 1:
        raise ValueError(f"unlabeled_frac={unlabeled_frac} leaves no labelled training image; lower it or raise n")
    extra = {"unlabeled_frac": float(unlabeled_frac)} if unlabeled_frac else {}  # older markers still match
    return {
        "version": _VERSION,
        "n": int(n),
        "imgsz": int(imgsz),
        "seed": int(seed),
        "val_frac": float(val_frac),
        "test_frac": float(test_frac),
        "classes": _check_classes(classes),
        "difficulty": _difficulty_value(difficulty),
        **extra,
    }


def _check_classes(classes: Sequence[str] | str | None) -> list[str]:
    """Normalise ``classes`` to a list of known, unique class names."""
    if classes is None:
        return list(CLASSES)
    if not isinstance(classes, (str, Sequence)):
        raise ValueError(
            f"classes={classes!r}: give class names, e.g. classes=disc,ring; choose from {', '.join(CLASSES)}"
        )
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    unknown = [c for c in names if c not in CLASSES]
    if unknown or not names:
        raise ValueError(f"classes={classes!r}: unknown or empty; choose from {', '.join(CLASSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes={classes!r} lists a class twice; give each class once")
    return names


def _difficulty_value(difficulty: str | float) -> float:
    """Map a preset name or a number to a difficulty in [0, 1]."""
    if isinstance(difficulty, str):
        key = difficulty.strip().lower()
        if key not in DIFFICULTIES:
            raise ValueError(f"difficulty={difficulty!r} is not one of {', '.join(DIFFICULTIES)} or a float in [0, 1]")
        return DIFFICULTIES[key]
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)) or not 0 <= difficulty <= 1:
        raise ValueError(f"difficulty={difficulty!r} must be one of {', '.join(DIFFICULTIES)} or a float in [0, 1]")
    return float(difficulty)


def _unlabeled_size(n_train: int, frac: float) -> int:
    """Training images whose labels are held back: rounded, but at least one for a non-zero fraction."""
    return max(1, round(n_train * frac)) if frac > 0 else 0


def _split_sizes(n: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """Images in val and test: rounded, but at least one for a non-zero fraction."""
    n_val = max(1, round(n * val_frac)) if val_frac > 0 else 0
    n_test = max(1, round(n * test_frac)) if test_frac > 0 else 0
    return n_val, n_test


# ------------------------------------------------------------------------------------------------ output folder


def _inspect_out(out: Path, params: dict[str, Any], exist_ok: bool) -> str:
    """Decide what to do with ``out``: "new", "reuse" or "regenerate"; raise if it may not be touched."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out={out} is a file; choose a folder path for the dataset")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    marker = _read_json(out / MARKER)
    if marker is None or marker.get("generator") != __name__:
        raise FileExistsError(
            f"out={out} is not empty and was not made by this generator (no {MARKER}); "
            "choose a new or empty folder, it will not be overwritten"
        )
    if not exist_ok:
        raise FileExistsError(
            f"out={out} already holds a synthetic dataset; pass exist_ok=True to reuse it (same parameters) "
            "or regenerate it (different parameters), or choose another folder"
        )
    same = marker.get("params") == json.loads(json.dumps(params))  # compare as stored: tuples become lists in JSON
    return "reuse" if same and marker.get("complete") and _files_match(out, marker) else "regenerate"


def _files_match(out: Path, marker: dict[str, Any]) -> bool:
    """Cheap integrity check before reuse: every split holds as many images and label files as generated."""
    for split, k in marker.get("counts", {}).get("images", {}).items():
        labels = out / ("labels_hidden" if split == UNLABELED else "labels") / split
        if k and (_count(out / "images" / split, "*.png") != k or _count(labels, "*.txt") != k):
            return False
    return (out / "data.yaml").is_file()


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else -1


def _check_writable(out: Path, params: dict[str, Any]) -> None:
    """Fail before writing when ``out`` cannot be created or written, or the dataset would not fit on its disk."""
    existing = out
    while not existing.exists():  # the deepest existing ancestor is where the first mkdir will happen
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot create out={out}: {existing} is a file; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write out={out}: {existing} is not writable; choose a writable folder")
    # The pixel noise leaves PNG little to compress: about 0.75 bytes per subpixel at the default difficulty.
    need = 0.75 * 3 * params["n"] * params["imgsz"] ** 2
    free = shutil.disk_usage(existing).free
    if need > free:
        raise OSError(
            f"n={params['n']} images at imgsz={params['imgsz']} need about {need / 1e9:.1f} GB, but only "
            f"{free / 1e9:.1f} GB are free under {existing}; lower n or imgsz, or choose another disk"
        )


def _remove_generated(out: Path) -> None:
    """Delete only what this generator wrote (and Ultralytics' label caches), leaving anything else in ``out``."""
    for sub in ("images", "labels", "labels_hidden"):
        for split in (*SPLITS, UNLABELED):
            shutil.rmtree(out / sub / split, ignore_errors=True)
    if (out / "labels_hidden").is_dir() and not any((out / "labels_hidden").iterdir()):
        (out / "labels_hidden").rmdir()
    for cache in (out / "labels").glob("*.cache"):
        cache.unlink()
    for name in ("data.yaml", MARKER):
        (out / name).unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _read_yaml_path(path: Path) -> str | None:
    try:
        return yaml.safe_load(path.read_text()).get("path")
    except (OSError, AttributeError, yaml.YAMLError):
        return None


def _write_data_yaml(out: Path, params: dict[str, Any]) -> Path:
    """Write ``data.yaml`` with an absolute ``path`` so it works from any working directory."""
    data: dict[str, Any] = {"path": str(out), "train": "images/train", "val": "images/val"}
    if params["test_frac"] > 0:
        data["test"] = "images/test"
    if params.get("unlabeled_frac"):
        data[UNLABELED] = f"images/{UNLABELED}"
    data["nc"] = len(params["classes"])
    data["names"] = dict(enumerate(params["classes"]))
    header = (
        f"# Synthetic shapes made by {__name__} (n={params['n']}, imgsz={params['imgsz']}, seed={params['seed']}, "
        f"difficulty={params['difficulty']:g}); regenerate rather than edit.\n"
    )
    path = out / "data.yaml"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


def _generate(out: Path, params: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Render and write every image and label file; return images per split and boxes per class."""
    n, names = params["n"], params["classes"]
    n_val, n_test = _split_sizes(n, params["val_frac"], params["test_frac"])
    order = np.random.default_rng(np.random.SeedSequence(params["seed"])).permutation(n)
    split_of = np.full(n, "train", dtype=object)
    split_of[order[:n_val]] = "val"
    split_of[order[n_val : n_val + n_test]] = "test"
    n_unlabeled = _unlabeled_size(n - n_val - n_test, params.get("unlabeled_frac", 0.0))
    split_of[order[n_val + n_test : n_val + n_test + n_unlabeled]] = UNLABELED  # train images, labels held back
    used = [s for s in (*SPLITS, UNLABELED) if (s != "test" or n_test) and (s != UNLABELED or n_unlabeled)]
    for split in used:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / ("labels_hidden" if split == UNLABELED else "labels") / split).mkdir(parents=True, exist_ok=True)

    knobs = _Knobs.at(params["difficulty"])
    size = params["imgsz"]
    boxes = np.zeros(len(names), dtype=int)
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence(params["seed"], spawn_key=(i,)))
        img, labels = _render(rng, size, names, knobs)
        stem, split = f"synth_{i:06d}", split_of[i]
        cv2.imwrite(str(out / "images" / split / f"{stem}.png"), img, _PNG_FLAGS)
        lines = []
        for c, x1, y1, x2, y2 in labels.tolist():
            cx, cy, w, h = (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size
            lines.append(f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        (out / ("labels_hidden" if split == UNLABELED else "labels") / split / f"{stem}.txt").write_text("".join(lines))
        boxes += np.bincount(labels[:, 0].astype(int), minlength=len(names))
    return {
        "images": {s: int((split_of == s).sum()) for s in used},
        "boxes": {name: int(k) for name, k in zip(names, boxes)},
    }


# ------------------------------------------------------------------------------------------------ rendering


def _render(rng: np.random.Generator, size: int, names: list[str], k: _Knobs) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image: background, clutter behind, labelled objects, thin clutter in front, noise."""
    img = _background(rng, size, k)
    _clutter(img, rng, k.clutter, size, k)
    owner = np.full((size, size), -1, dtype=np.int32)  # index of the object on top at each pixel, -1 for none
    areas: list[int] = []
    visible: list[int] = []
    labels: list[list[float]] = []
    target = int(rng.integers(k.objects[0], k.objects[1] + 1))
    for _ in range(6 * target):  # placements that would bury an earlier object are rejected and redrawn
        if len(labels) == target:
            break
        cls = int(rng.integers(len(names)))
        placed = _place(img, owner, visible, areas, rng, names[cls], size, k)
        if placed is not None:
            labels.append([cls, *placed])
    _clutter(img, rng, k.foreground, size, k, thin=True)

    if rng.random() < k.blur:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    # Triangular noise (difference of two uniform bytes, std 104.5) in 8.8 fixed point: looks like sensor noise and
    # costs a tenth of float Gaussian noise, which dominated the generation time.
    tri = rng.integers(0, 256, img.shape, dtype=np.uint8).astype(np.int16) - rng.integers(0, 256, img.shape, np.uint8)
    noisy = img.astype(np.int16) + ((tri * round(k.noise / 104.5 * 256)) >> 8)
    return np.clip(noisy, 0, 255).astype(np.uint8), np.asarray(labels, dtype=np.float32).reshape(-1, 5)


def _background(rng: np.random.Generator, size: int, k: _Knobs) -> np.ndarray:
    """Linear colour gradient in a random direction plus smooth low-frequency blotches."""
    c0, c1 = rng.uniform(20, 235, (2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    # Built on a 6x6 grid and upsampled once: cubic interpolation keeps a linear ramp linear, and is 10x cheaper.
    grid = np.linspace(0, 1, 6)
    t = np.add.outer(grid * math.sin(theta), grid * math.cos(theta))
    t = (t - t.min()) / (t.max() - t.min())
    coarse = c0 + (c1 - c0) * t[..., None] + rng.uniform(-1, 1, (6, 6, 3)) * k.blotch
    img = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _clutter(img: np.ndarray, rng: np.random.Generator, count: int, size: int, k: _Knobs, thin: bool = False) -> None:
    """Draw unlabelled distractors at object scale, so that "something is there" is not enough to score a box."""
    lo, hi = (v * size for v in k.size)
    for _ in range(count):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = 0 if thin else int(rng.integers(4))
        extent = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        x, y = rng.uniform(0, size, 2)
        thickness = 1 if thin else int(rng.integers(1, 4))
        if kind == 0:  # polyline random walk
            steps = rng.normal(0, extent / 2, (int(rng.integers(2, 6)), 2))
            pts = np.vstack([[x, y], [x, y] + np.cumsum(steps, axis=0)])
            cv2.polylines(img, [_fixed(pts)], False, colour, thickness, cv2.LINE_AA, _SHIFT)
        elif kind == 1:  # elongated ellipse: too eccentric to pass for a disc or ring
            axes = (max(2, round(extent / 2)), max(1, round(extent / 2 / rng.uniform(2.5, 6))))
            fill = -1 if rng.random() < 0.5 else thickness
            cv2.ellipse(img, (round(x), round(y)), axes, float(rng.uniform(0, 180)), 0, 360, colour, fill, cv2.LINE_AA)
        elif kind == 2:  # arc of at most 160 degrees: part of a circle, never a ring
            start = float(rng.uniform(0, 360))
            r = max(2, round(extent / 2))
            span = float(rng.uniform(40, 160))
            cv2.ellipse(img, (round(x), round(y)), (r, r), 0, start, start + span, colour, thickness, cv2.LINE_AA)
        else:  # letter
            letter = _LETTERS[int(rng.integers(len(_LETTERS)))]
            scale = max(extent / 22, 0.3)  # Hershey glyphs are about 22 px tall at scale 1
            org = (round(x), round(y))
            cv2.putText(img, letter, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def _place(
    img: np.ndarray,
    owner: np.ndarray,
    visible: list[int],
    areas: list[int],
    rng: np.random.Generator,
    name: str,
    size: int,
    k: _Knobs,
) -> list[float] | None:
    """Try to draw one object; return its box (x1, y1, x2, y2), or None if it would bury an earlier object."""
    lo, hi = (v * size for v in k.size)
    diameter = math.exp(rng.uniform(math.log(lo), math.log(hi))) * _SIZE_SCALE[name]
    diameter = min(max(diameter, _MIN_PX), 0.6 * size)
    cx, cy = rng.uniform(diameter / 2 + 1, size - diameter / 2 - 1, 2)
    x0, y0 = max(0, math.floor(cx - diameter / 2) - 1), max(0, math.floor(cy - diameter / 2) - 1)
    x1, y1 = min(size, math.ceil(cx + diameter / 2) + 2), min(size, math.ceil(cy + diameter / 2) + 2)
    alpha, extent = _shape_mask(rng, name, (y1 - y0, x1 - x0), (cx - x0, cy - y0), diameter)
    solid = alpha >= 128
    if not solid.any():
        return None
    own = owner[y0:y1, x0:x1]
    covered = np.bincount(own[solid & (own >= 0)], minlength=len(areas))
    if any(visible[j] - covered[j] < k.min_visible * areas[j] for j in np.flatnonzero(covered)):
        return None

    roi = img[y0:y1, x0:x1]
    a = alpha.astype(np.float32)[..., None] / 255
    fill = _TYPICAL_TEXTURE[name] if rng.random() < k.texture_bias else TEXTURES[int(rng.integers(len(TEXTURES)))]
    c1, c2 = _colours(rng, fill, _luma(roi[solid].mean(0)), k.min_contrast)
    texture = _texture(rng, fill, roi.shape[:2], diameter, c1, c2)
    roi[:] = np.clip(np.rint(roi * (1 - a) + texture * a), 0, 255).astype(np.uint8)

    for j in np.flatnonzero(covered):
        visible[j] -= int(covered[j])
    own[solid] = len(areas)
    areas.append(int(solid.sum()))
    visible.append(areas[-1])
    # OpenCV fills every pixel whose centre lies on the outline, so the drawn shape spans half a pixel beyond its
    # geometry; in YOLO's frame, where pixel i covers [i, i+1], the box is therefore [min, max + 1].
    box = extent + np.array([x0, y0, x0 + 1, y0 + 1])
    return np.clip(box, 0, size).tolist()


def _shape_mask(
    rng: np.random.Generator, name: str, shape: tuple[int, int], centre: tuple[float, float], diameter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one class outline, inscribed in a circle of ``diameter`` around ``centre``.

    Returns:
        (np.ndarray): Anti-aliased uint8 mask of ``shape``.
        (np.ndarray): Exact extent (x1, y1, x2, y2) of the outline in OpenCV pixel-centre coordinates. Taken from the
            geometry rather than the mask, because the faint anti-aliased tip of a sharp corner would be cut off.
    """
    mask = np.zeros(shape, dtype=np.uint8)
    r, theta = diameter / 2, rng.uniform(0, 2 * math.pi)
    c = np.asarray(centre)
    if name in ("disc", "ring"):
        centre_fx, radius_fx = _fixed(c), int(_fixed(r))
        cv2.circle(mask, tuple(int(v) for v in centre_fx), radius_fx, 255, -1, cv2.LINE_AA, _SHIFT)
        if name == "ring":
            hole = round(radius_fx * rng.uniform(0.45, 0.7))
            cv2.circle(mask, tuple(int(v) for v in centre_fx), hole, 0, -1, cv2.LINE_AA, _SHIFT)
        return mask, np.concatenate([centre_fx - radius_fx, centre_fx + radius_fx]) / 2**_SHIFT
    if name == "square":
        angles, radii = theta + np.arange(4) * math.pi / 2, np.full(4, r)
        pts = c + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    elif name == "triangle":  # jittered so triangles are not all equilateral
        angles = theta + np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.15, 0.15, 3)
        radii = r * rng.uniform(0.85, 1.0, 3)
        pts = c + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    elif name == "cross":  # plus sign; arms stay inside the circle: hypot(0.94, 0.32) < 1
        a, tip = r * rng.uniform(0.22, 0.32), 0.94 * r
        uv = np.array([(a, tip), (-a, tip), (-a, a), (-tip, a), (-tip, -a), (-a, -a)])
        uv = np.vstack([uv, -uv])
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        pts = c + uv @ rot.T
    else:
        raise ValueError(f"unknown class {name!r}; choose from {', '.join(CLASSES)}")
    pts_fx = _fixed(pts)
    cv2.fillPoly(mask, [pts_fx], 255, cv2.LINE_AA, _SHIFT)
    return mask, np.concatenate([pts_fx.min(0), pts_fx.max(0)]) / 2**_SHIFT


def _colours(
    rng: np.random.Generator, texture: str, background: float, min_contrast: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two fill colours; resampled until the fill stands ``min_contrast`` luma apart from the background under it."""
    best, best_gap = None, -1.0
    for _ in range(8):
        c1, c2 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        if abs(_luma(c1) - _luma(c2)) < 60:  # a pattern in two near-equal tones would read as a solid fill
            c2 = 255 - c1
        # A pattern is visible if either tone contrasts; a solid fill only has one.
        gap = abs(_luma(c1) - background) if texture == "solid" else max(abs(_luma(c) - background) for c in (c1, c2))
        if gap > best_gap:
            best, best_gap = (c1, c2), gap
        if gap >= min_contrast:
            break
    return best


def _texture(
    rng: np.random.Generator, name: str, shape: tuple[int, int], diameter: float, c1: np.ndarray, c2: np.ndarray
) -> np.ndarray:
    """Float32 BGR fill of ``shape``: solid with shading, stripes, checker or dots, at a random angle."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = yy * math.cos(theta) - xx * math.sin(theta)
    if name == "solid":  # mild shading so that a solid fill is not a flat colour template
        shade = 1 + 0.3 * (u - u.mean()) / max(shape)
        return c1 * shade[..., None]
    period = max(3.0, diameter * rng.uniform(0.18, 0.3))
    if name == "stripes":
        pick = (u / period) % 1 < 0.5
    elif name == "checker":
        pick = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:  # dots
        pick = ((u / period) % 1 - 0.5) ** 2 + ((v / period) % 1 - 0.5) ** 2 < 0.09
    return np.where(pick[..., None], c2, c1)


def _luma(bgr: np.ndarray) -> float:
    return float(bgr[0] * 0.114 + bgr[1] * 0.587 + bgr[2] * 0.299)


def _fixed(pts: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> OpenCV fixed point with ``_SHIFT`` fractional bits."""
    return np.rint(np.asarray(pts) * 2**_SHIFT).astype(np.int32)
