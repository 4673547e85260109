"""Tests for the synthetic detection dataset: determinism, label validity, layout, input checks, caching, training."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ultralytics_kd.data import CLASSES, make_synthetic_dataset, render_image, synth


def _digest(root: Path) -> dict[str, str]:
    """SHA-256 of every image and label file, keyed by relative path."""
    files = sorted(p for p in root.rglob("*") if p.suffix in (".png", ".txt"))
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _labels(root: Path) -> np.ndarray:
    rows = [line.split() for f in sorted(root.glob("labels/*/*.txt")) for line in f.read_text().splitlines()]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


@pytest.fixture(scope="module")
def fifty(tmp_path_factory) -> Path:
    """A 50-image dataset at the default settings, shared by the read-only tests."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "d50", n=50, imgsz=160, seed=0).parent


def test_same_seed_gives_identical_bytes(tmp_path, fifty):
    again = make_synthetic_dataset(tmp_path / "again", n=50, imgsz=160, seed=0).parent
    first, second = _digest(fifty), _digest(again)
    assert len(first) == 100 and first == second


def test_different_seed_differs(tmp_path, fifty):
    first = _digest(fifty)
    other = _digest(make_synthetic_dataset(tmp_path / "other", n=50, imgsz=160, seed=1).parent)
    images = [k for k in set(first) & set(other) if k.endswith(".png")]
    assert len(images) >= 20  # the split permutation changes with the seed too, so only some names coincide
    assert all(first[k] != other[k] for k in images)


def test_image_does_not_depend_on_n():
    """Each image has its own random stream, so growing n keeps the first images as they were."""
    img_a, lab_a = render_image(seed=3, index=7, imgsz=96)
    img_b, lab_b = render_image(seed=3, index=7, imgsz=96)
    img_c, _ = render_image(seed=3, index=8, imgsz=96)
    assert np.array_equal(img_a, img_b) and np.array_equal(lab_a, lab_b)
    assert not np.array_equal(img_a, img_c)


def test_labels_valid_and_cover_every_class(fifty):
    labels = _labels(fifty)
    cls, boxes = labels[:, 0], labels[:, 1:]
    assert len(labels) >= 100  # several objects per image on average
    assert np.all(cls == cls.round()) and set(cls.astype(int)) == set(range(len(CLASSES)))
    assert np.all((boxes >= 0) & (boxes <= 1))
    cx, cy, w, h = boxes.T
    assert np.all(w > 0) and np.all(h > 0)
    assert np.all(cx - w / 2 >= -1e-6) and np.all(cx + w / 2 <= 1 + 1e-6)
    assert np.all(cy - h / 2 >= -1e-6) and np.all(cy + h / 2 <= 1 + 1e-6)
    assert (w * h < 0.01).sum() >= 10  # small objects: under 1% of the image area


def test_box_is_tight_around_the_drawn_object():
    """With clutter and noise off, the box matches the pixels its object changed, up to the anti-aliased fringe."""
    knobs = dataclasses.replace(synth._Knobs.at(0.5), objects=(1, 1), clutter=0, foreground=0, noise=0, blur=0)
    offsets = []
    for name in CLASSES:
        for seed in range(12):
            background = synth._background(np.random.default_rng(seed), 160, knobs)
            img, labels = synth._render(np.random.default_rng(seed), 160, [name], knobs)
            assert labels.shape == (1, 5) and labels[0, 0] == 0
            ys, xs = np.nonzero((img != background).any(axis=2))
            changed = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            offsets.append(changed - labels[0, 1:])
    offsets = np.array(offsets)
    assert np.abs(offsets).max() <= 2.25  # at most the faint fringe pixel around the outline, plus a corner tip
    # The fringe sits evenly on both sides: a half-pixel convention slip between OpenCV and YOLO would show here.
    assert abs(offsets[:, :2].mean() + offsets[:, 2:].mean()) < 0.2


def test_layout_and_data_yaml(fifty):
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(fifty / "data.yaml")
    assert data["nc"] == 5 and data["names"] == dict(enumerate(CLASSES))
    counts = {s: len(list((fifty / "images" / s).glob("*.png"))) for s in ("train", "val", "test")}
    assert counts == {"train": 35, "val": 10, "test": 5}
    for split in counts:
        images = {p.stem for p in (fifty / "images" / split).glob("*.png")}
        assert images == {p.stem for p in (fifty / "labels" / split).glob("*.txt")}
        assert Path(data[split]) == fifty / "images" / split
    marker = json.loads((fifty / synth.MARKER).read_text())
    assert marker["complete"] and marker["counts"]["images"] == counts


def test_no_test_split_and_class_subset(tmp_path):
    out = make_synthetic_dataset(tmp_path / "d", n=12, imgsz=64, test_frac=0, classes="ring,cross").parent
    text = (out / "data.yaml").read_text()
    assert "test:" not in text and not (out / "images" / "test").exists()
    assert set(_labels(out)[:, 0].astype(int)) <= {0, 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n=0"),
        ({"n": -5}, "n=-5"),
        ({"n": 2_000_000}, "n=2000000"),
        ({"n": 2.5}, "whole number"),
        ({"imgsz": 16}, "imgsz=16"),
        ({"imgsz": 5000}, "imgsz=5000"),
        ({"seed": -1}, "seed=-1"),
        ({"val_frac": 0.6, "test_frac": 0.4}, "no training images"),
        ({"val_frac": 1.2}, "val_frac"),
        ({"val_frac": 0}, "val_frac>0"),
        ({"n": 2}, "raise n"),
        ({"classes": ["disc", "hexagon"]}, "choose from"),
        ({"classes": "disc,disc"}, "twice"),
        ({"difficulty": "insane"}, "difficulty"),
        ({"difficulty": 1.5}, "difficulty"),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path, kwargs, message):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        make_synthetic_dataset(out, **{"n": 10, "imgsz": 64, **kwargs})
    assert not out.exists()


def test_unwritable_output(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        make_synthetic_dataset(blocker, n=4, imgsz=64)
    with pytest.raises(NotADirectoryError, match="is a file"):
        make_synthetic_dataset(blocker / "sub", n=4, imgsz=64)
    # Root ignores permission bits, so the access check itself is stubbed to stand for a read-only folder.
    monkeypatch.setattr(synth.os, "access", lambda *args: False)
    with pytest.raises(PermissionError, match="not writable"):
        make_synthetic_dataset(tmp_path / "ro" / "d", n=4, imgsz=64)
    assert not (tmp_path / "ro").exists()


def test_dataset_too_big_for_the_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(synth.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**6))
    with pytest.raises(OSError, match="need about 0.3 GB"):  # 5000 images of 160x160x3 bytes, mostly incompressible
        make_synthetic_dataset(tmp_path / "d", n=5000, imgsz=160)
    assert not (tmp_path / "d").exists()


def test_existing_folder_is_never_overwritten_silently(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for exist_ok in (False, True):
        with pytest.raises(FileExistsError, match="not made by this generator"):
            make_synthetic_dataset(foreign, n=4, imgsz=64, exist_ok=exist_ok)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "d"
    make_synthetic_dataset(out, n=6, imgsz=64)
    with pytest.raises(FileExistsError, match="exist_ok=True"):
        make_synthetic_dataset(out, n=6, imgsz=64)


def test_exist_ok_reuses_or_regenerates(tmp_path):
    out = tmp_path / "d"
    yaml_path = make_synthetic_dataset(out, n=6, imgsz=64, seed=0)
    (out / "keep.txt").write_text("user file")
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    assert make_synthetic_dataset(out, n=6, imgsz=64, seed=0, exist_ok=True) == yaml_path
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps  # reused, nothing rewritten

    make_synthetic_dataset(out, n=10, imgsz=64, seed=1, exist_ok=True)  # other parameters: regenerated
    assert len(list(out.glob("images/*/*.png"))) == 10 and len(list(out.glob("labels/*/*.txt"))) == 10
    assert json.loads((out / synth.MARKER).read_text())["params"]["seed"] == 1
    assert (out / "keep.txt").read_text() == "user file"  # only the generator's own files are replaced

    next(out.glob("images/train/*.png")).unlink()  # a damaged cache is regenerated, not trusted
    make_synthetic_dataset(out, n=10, imgsz=64, seed=1, exist_ok=True)
    assert len(list(out.glob("images/*/*.png"))) == 10


def test_difficulty_changes_the_task():
    """Harder settings put more objects in an image and make them smaller."""
    stats = {}
    for level in ("easy", "hard"):
        labels = [render_image(seed=0, index=i, imgsz=160, difficulty=level)[1] for i in range(20)]
        sizes = np.concatenate([(lab[:, 3] - lab[:, 1]) * (lab[:, 4] - lab[:, 2]) for lab in labels])
        stats[level] = (sum(map(len, labels)), np.median(sizes))
    assert stats["hard"][0] > 1.5 * stats["easy"][0]
    assert stats["hard"][1] < 0.5 * stats["easy"][1]


def _parsed(*words: str) -> dict:
    """``key=value`` words typed as ``yolo-kd`` types them before it calls ``synth.cli``."""
    from ultralytics_kd.cli import _parse

    return _parse(list(words))[1]


def test_cli_checks_parsed_values_and_summarises(tmp_path, capsys):
    out = tmp_path / "cli"
    args = _parsed(f"out={out}", "n=8", "imgsz=64", "seed=2", "difficulty=0.3", "exist_ok=false")
    assert args["n"] == 8 and args["difficulty"] == 0.3 and args["exist_ok"] is False  # typed once, by the CLI
    yaml_path = synth.cli(args)
    assert yaml_path == out.resolve() / "data.yaml"
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "train 5, val 2, test 1" in printed and "disc" in printed
    assert synth.cli({**args, "exist_ok": True}) == yaml_path  # same parameters: reused
    assert synth.cli({**args, **_parsed("n=8e0", "classes=none", "exist_ok=True")}) == yaml_path  # 8.0 is 8
    with pytest.raises(ValueError, match="unknown synth argument"):
        synth.cli({"out": str(out), "size": 64})
    bad = [("n=ten", "n='ten' must be a whole number"), ("n=8.5", "whole number"), ("val_frac=1.5", "fraction"),
           ("exist_ok=maybe", "exist_ok='maybe' must be true or false"), ("classes=disc,blob", "unknown"),
           ("difficulty=extreme", "difficulty='extreme'")]  # fmt: skip
    for word, message in bad:
        with pytest.raises(ValueError, match=message):
            synth.cli(_parsed(f"out={tmp_path / 'x'}", word))
    assert not (tmp_path / "x").exists()  # every check runs before anything is written


@pytest.mark.slow
def test_one_epoch_ultralytics_training(tmp_path):
    from ultralytics import YOLO

    data = make_synthetic_dataset(tmp_path / "data", n=20, imgsz=64, seed=0)
    labels = _labels(data.parent)
    assert set(labels[:, 0].astype(int)) == set(range(len(CLASSES)))
    YOLO("yolov8n.yaml").train(
        data=str(data), epochs=1, imgsz=64, batch=8, workers=0, plots=False, device="cpu", amp=False,
        project=str(tmp_path / "runs"), name="synth", exist_ok=True, verbose=False,
    )  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "runs" / "synth" / "results.csv").open()))
    assert len(rows) == 1
    assert all(np.isfinite(float(rows[0][k])) for k in ("train/box_loss", "train/cls_loss", "val/box_loss"))
    assert os.path.getsize(tmp_path / "runs" / "synth" / "weights" / "last.pt") > 0
