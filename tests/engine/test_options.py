"""Ultralytics' training options under KDTrainer: each test fails if the option stops working with a teacher beside
the student (README "Ultralytics' training options under KDTrainer" lists them with these tests).

Every run is tiny (yolov8n student from YAML, imgsz 64, 1-2 epochs on 8 synthetic images) and distils with ``ld+cwd``:
LD reads the teacher's box distributions, CWD its features through trainable adapters.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from ultralytics import YOLO
from ultralytics.data.augment import Mosaic
from ultralytics.models.yolo.detect import train as detect_train

from ultralytics_kd import KDTrainer

KD = dict(kd_recipe="ld+cwd", kd_teacher_check=False, val=False)
KD_TERMS = ("kdld_loss", "kdcwd_loss")
# no random augmentation: a batch then depends only on the images and the loader's own seeded shuffle
NO_AUG = dict(mosaic=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, fliplr=0.0, translate=0.0, scale=0.0)
_MOSAICS = []  # one entry per image that Mosaic actually built, taken by the batch that holds it


class Recorder(KDTrainer):
    """Records per batch: the epoch, the image tensor the student trained on, what the teacher saw, the mosaics built
    for the batch, and the loss items."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen, self.teacher_inputs, self.before = [], [], {}
        self.add_callback(
            "on_train_batch_end", lambda t: t.seen[-1].update(loss={k: float(v) for k, v in t.loss_items.items()})
        )

    def _setup_train(self):
        super()._setup_train()
        self.teacher.register_forward_pre_hook(lambda m, args: self.teacher_inputs.append(args[0]))
        self.before = {
            "student": {k: v.clone() for k, v in self.model.state_dict().items()},
            "adapters": {k: v.clone() for k, v in self.kd_connectors.state_dict().items()},
        }

    def preprocess_batch(self, batch):
        batch = super().preprocess_batch(batch)
        self.seen.append({"epoch": self.epoch, "img": batch["img"], "mosaics": len(_MOSAICS)})
        _MOSAICS.clear()
        return batch


def _train(data, teacher_pt, tiny, project, name, **overrides) -> Recorder:
    model = YOLO("yolov8n.yaml")
    args = {**tiny, **KD, "epochs": 1, **overrides}
    model.train(trainer=Recorder, teacher=str(teacher_pt), data=str(data), project=str(project), name=name, **args)
    return model.trainer


def _kd_terms_on(trainer: Recorder) -> bool:
    return all(math.isfinite(b["loss"][k]) and b["loss"][k] > 0 for b in trainer.seen for k in KD_TERMS)


def _copy_data(data_yaml: Path, dst: Path, widen: bool = False) -> Path:
    """Copy the fixture dataset; ``widen`` pads every train image with as much black on its right (aspect 1:2)."""
    src = data_yaml.parent
    shutil.copytree(src / "images", dst / "images")
    shutil.copytree(src / "labels", dst / "labels", ignore=shutil.ignore_patterns("*.cache"))
    if widen:
        for f in (dst / "images" / "train").glob("*.jpg"):
            im = cv2.imread(str(f))
            cv2.imwrite(str(f), np.hstack([im, np.zeros_like(im)]))
            label = f.parents[2] / "labels" / "train" / f.with_suffix(".txt").name
            rows = [r.split() for r in label.read_text().splitlines()]
            label.write_text("".join(f"{c} {float(x) / 2:.6f} {y} {float(w) / 2:.6f} {h}\n" for c, x, y, w, h in rows))
    (dst / "data.yaml").write_text(data_yaml.read_text().replace(f"path: {src}", f"path: {dst}"))
    return dst / "data.yaml"


@pytest.fixture(scope="module")
def two_epochs(data_yaml, teacher_pt, tiny, tmp_path_factory):
    """Two epochs with close_mosaic=1, save_period=1 and freeze=10 (yolov8n's backbone), options that touch the loader,
    the checkpoints and the student's parameters: each test below reads its own."""
    get_indexes = Mosaic.get_indexes

    def counted(self, *args, **kwargs):  # called only when Mosaic fires (its probability p passed)
        _MOSAICS.append(1)
        return get_indexes(self, *args, **kwargs)

    _MOSAICS.clear()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Mosaic, "get_indexes", counted)
        project = tmp_path_factory.mktemp("options")
        return _train(data_yaml, teacher_pt, tiny, project, "two", epochs=2, close_mosaic=1, save_period=1, freeze=10)


@pytest.fixture(scope="module")
def one_epoch(data_yaml, teacher_pt, tiny, tmp_path_factory):
    """One epoch without random augmentation."""
    return _train(data_yaml, teacher_pt, tiny, tmp_path_factory.mktemp("options"), "one", **NO_AUG)


def test_close_mosaic_closes_the_students_loader_and_keeps_distilling(two_epochs):
    """Mosaic builds every image of epoch 1 and none of epoch 2; the KD terms stay on (``kd_off_last`` is off)."""
    mosaics = [sum(b["mosaics"] for b in two_epochs.seen if b["epoch"] == e) for e in (0, 1)]
    assert mosaics == [8, 0]  # 8 train images, mosaic=1.0
    assert [b["epoch"] for b in two_epochs.seen] == [0, 0, 1, 1] and _kd_terms_on(two_epochs)


def test_save_period_checkpoints_carry_the_kd_state(two_epochs, teacher_pt):
    """epoch0.pt and epoch1.pt carry the distillation state of their own epoch, not a copy of last.pt's."""
    wdir = two_epochs.wdir
    ckpts = [torch.load(wdir / f"epoch{e}.pt", map_location="cpu", weights_only=False) for e in (0, 1)]
    assert [c["epoch"] for c in ckpts] == [0, 1]
    sha = hashlib.sha256(Path(teacher_pt).read_bytes()).hexdigest()
    assert all(c["kd"]["teacher_sha256"] == sha and c["kd"]["settings"]["kd_recipe"] == "ld+cwd" for c in ckpts)
    final = two_epochs.kd_connectors.state_dict()
    assert all(torch.equal(ckpts[1]["kd"]["connectors"][k], v.cpu()) for k, v in final.items())
    weights = [k for k in final if k.endswith("weight")]
    assert not any(torch.equal(ckpts[0]["kd"]["connectors"][k], final[k].cpu()) for k in weights)  # epoch 1's own


def test_freeze_keeps_frozen_layers_bit_identical_and_adapters_train(two_epochs):
    """freeze=10 (yolov8n's backbone): layers 0-9 keep every weight and BatchNorm statistic; the neck, the head and
    the KD adapters train."""
    trainer = two_epochs
    before, after = trainer.before["student"], trainer.model.state_dict()
    changed = {int(k.split(".")[1]) for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed.isdisjoint(range(10)) and {12, 15, 18, 21, 22} <= changed  # 10, 11, 13, ... hold no weights
    adapters = trainer.before["adapters"]
    assert all(not torch.equal(v, adapters[k]) for k, v in trainer.kd_connectors.state_dict().items())
    assert _kd_terms_on(trainer)


@pytest.mark.parametrize("cache", ["ram", "disk"])
def test_cache_trains_on_the_same_images(cache, one_epoch, data_yaml, teacher_pt, tiny, tmp_path):
    """Cached images give the student and the teacher the same batches, hence the same losses, as uncached ones.

    Both runs train without random augmentation: the stock cache check draws sample images from Python's RNG, so with
    augmentation a cached run sees other (equally valid) augmented batches than an uncached one with the same seed.
    """
    data = _copy_data(data_yaml, tmp_path / "data")  # cache='disk' writes .npy files beside the images
    trainer = _train(data, teacher_pt, tiny, tmp_path, cache, cache=cache, **NO_AUG)
    if cache == "disk":
        assert len(list((tmp_path / "data" / "images" / "train").glob("*.npy"))) == 8
    else:
        assert all(im is not None for im in trainer.train_loader.dataset.ims)
    assert len(trainer.seen) == len(one_epoch.seen) == 2
    assert all(torch.equal(b["img"], a["img"]) for b, a in zip(trainer.seen, one_epoch.seen))
    assert [b["loss"] for b in trainer.seen] == [b["loss"] for b in one_epoch.seen] and _kd_terms_on(trainer)


def test_rect_batches_are_rectangular_and_the_teacher_sees_them(data_yaml, teacher_pt, tiny, tmp_path):
    """Images twice as wide as high train as 32x64 batches at imgsz=64 (stride 32); the teacher sees those tensors."""
    data = _copy_data(data_yaml, tmp_path / "wide", widen=True)
    trainer = _train(data, teacher_pt, tiny, tmp_path, "rect", rect=True)
    assert [tuple(b["img"].shape) for b in trainer.seen] == [(4, 3, 32, 64)] * 2
    assert len(trainer.teacher_inputs) == 2
    assert all(t is b["img"] for t, b in zip(trainer.teacher_inputs, trainer.seen)) and _kd_terms_on(trainer)


def test_multi_scale_teacher_sees_the_resized_batch(data_yaml, teacher_pt, tiny, tmp_path, monkeypatch):
    """The stock multi-scale draw, fixed to 32 then 96 px: the teacher sees each resized batch and distils at it."""
    sizes = iter([32, 96])
    monkeypatch.setattr(detect_train, "random", SimpleNamespace(randrange=lambda lo, hi: next(sizes)))
    trainer = _train(data_yaml, teacher_pt, tiny, tmp_path, "ms", multi_scale=0.5)
    assert [tuple(t.shape) for t in trainer.teacher_inputs] == [(4, 3, 32, 32), (4, 3, 96, 96)]
    assert all(t is b["img"] for t, b in zip(trainer.teacher_inputs, trainer.seen)) and _kd_terms_on(trainer)


def test_fraction_trains_on_that_share_of_the_images(one_epoch, data_yaml, teacher_pt, tiny, tmp_path):
    """fraction=0.5 of 8 images: the first 4 of the full list, one batch, one teacher pass."""
    trainer = _train(data_yaml, teacher_pt, tiny, tmp_path, "fraction", fraction=0.5)
    assert trainer.train_loader.dataset.im_files == one_epoch.train_loader.dataset.im_files[:4]
    assert len(trainer.seen) == len(trainer.teacher_inputs) == 1 and _kd_terms_on(trainer)
