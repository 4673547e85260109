"""KDTrainer with unlabeled=: tiny CPU runs that train on labelled and unlabelled images end to end."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO

from ultralytics_kd import KDTrainer
from ultralytics_kd.distill.unlabeled import LIST_NAME


def _unlabelled(data_yaml: Path, folder: Path, n: int = 4) -> list[Path]:
    """Copies of the val images without their label files (the val images themselves stay labelled)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        Path(shutil.copy(f, folder / f"u{f.name}")) for f in sorted((data_yaml.parent / "images" / "val").glob("*"))[:n]
    ]


def _mosaic_p(transform) -> float | None:
    """The probability of the first Mosaic among a dataset's (nested) transforms."""
    if type(transform).__name__ == "Mosaic":
        return transform.p
    for sub in getattr(transform, "transforms", None) or []:
        if (p := _mosaic_p(sub)) is not None:
            return p
    return None


class Spy(KDTrainer):
    """Records, for every training batch, which files are labelled and which are not, and what the teacher saw."""

    seen: list = []

    def preprocess_batch(self, batch):
        batch = super().preprocess_batch(batch)
        kd = batch.get("kd")
        if kd is not None and kd.teacher is not None:
            n = kd.n_labeled
            mosaic = _mosaic_p(self._kd_unlabeled.loader.dataset.transforms)
            Spy.seen.append(
                (
                    self.epoch,
                    list(batch["im_file"][:n]),
                    list(batch["im_file"][n:]),
                    kd.teacher["scores"].shape[0],
                    batch["img"].shape[0],
                    mosaic,
                )
            )
        return batch


def test_unlabelled_images_train_from_the_teacher_only(data_yaml, teacher_pt, tiny, tmp_path):
    """A .txt list source: each step holds a labelled batch then an unlabelled one, the teacher sees all of them,
    every unlabelled file comes from the list (mosaic never pastes the two kinds together), each kind has its
    columns, and mosaic closes on both loaders for the close_mosaic epochs."""
    files = _unlabelled(data_yaml, tmp_path / "u")
    listed = tmp_path / "u.txt"
    listed.write_text("\n".join(map(str, files)) + "\n")
    Spy.seen = []
    model = YOLO("yolov8n.yaml")
    model.train(
        trainer=Spy, teacher=str(teacher_pt), data=str(data_yaml), unlabeled=str(listed), kd_unlabeled_ratio=0.5,
        kd_unlabeled_terms="dense", epochs=2, close_mosaic=1, project=str(tmp_path), name="run", **tiny,
    )  # fmt: skip
    train = {str(p) for p in (data_yaml.parent / "images" / "train").glob("*")}
    unl = {str(p) for p in files}
    assert Spy.seen and all(set(lab) <= train and set(u) <= unl and len(u) == 2 for _, lab, u, *_ in Spy.seen)
    assert all(t == n == len(lab) + len(u) for _, lab, u, t, n, _ in Spy.seen)
    assert all(m == 1.0 for e, *_, m in Spy.seen if e == 0) and all(m == 0.0 for e, *_, m in Spy.seen if e == 1)
    rows = list(csv.DictReader((tmp_path / "run" / "results.csv").open()))
    assert float(rows[0]["train/usl2_loss"]) > 0 and float(rows[0]["train/kdsl2_loss"]) > 0
    assert (tmp_path / "run" / LIST_NAME).read_text().split() == sorted(map(str, files))


def test_dense_and_pseudo_columns_reach_results_csv(data_yaml, teacher_pt, tiny, tmp_path):
    """kd_unlabeled_terms=dense+pseudo: the unlabelled images learn the recipe's feature term (sl2, the selected
    student's), cls_bce and ld, and the stock loss on the teacher's boxes; every column is in results.csv and finite,
    though the warm-up's first batch (no teacher, no unlabelled image) is the one that names the columns."""
    _unlabelled(data_yaml, tmp_path / "u")
    model = YOLO("yolov8n.yaml")
    model.train(
        trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), unlabeled=str(tmp_path / "u"),
        kd_unlabeled_terms="dense+pseudo", kd_pseudo_conf=0.01, kd_warmup=0.5, kd_teacher_check=False, epochs=1,
        project=str(tmp_path), name="dp", **tiny,
    )  # fmt: skip
    plan = model.trainer.kd_unlabeled_plan
    assert plan.mode == "dense+pseudo" and plan.chosen and [t.name for t in plan.terms] == ["sl2", "cls_bce", "ld"]
    row = next(csv.DictReader((tmp_path / "dp" / "results.csv").open()))
    cols = ["usl2_loss", "ucls_loss", "uld_loss", "upbox_loss", "upcls_loss", "updfl_loss"]
    assert all(math.isfinite(float(row[f"train/{c}"])) for c in cols), row
    assert float(row["train/ucls_loss"]) > 0 and float(row["train/upcls_loss"]) > 0
    assert "train/kdcls_loss" not in row and "train/kdsl2_loss" in row  # the labelled images keep the recipe's term


def test_unlabelled_bad_input_stops_before_training(data_yaml, teacher_pt, tiny, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher.*unlabeled= images learn from the teacher"):
        YOLO("yolov8n.yaml").train(trainer=KDTrainer, data=str(data_yaml), unlabeled=str(tmp_path), **tiny)
    labelled = _unlabelled(data_yaml, tmp_path / "u")
    labelled[0].with_suffix(".txt").write_text("0 0.5 0.5 0.2 0.2\n")
    for source, match in ((tmp_path / "none", "not found"), (tmp_path / "u", "have a label file")):
        with pytest.raises((FileNotFoundError, ValueError), match=match):
            YOLO("yolov8n.yaml").train(
                trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), unlabeled=str(source), epochs=1,
                project=str(tmp_path), name="bad", **tiny,
            )  # fmt: skip
        assert not (tmp_path / "bad").exists()


def test_a_resumed_run_keeps_its_unlabelled_images(data_yaml, teacher_pt, tiny, tmp_path):
    """An image added to the folder after the run started is not picked up on resume: the run goes on with its set."""
    from tests.engine.test_kd_trainer import _train_until_first_save

    files = _unlabelled(data_yaml, tmp_path / "u", n=3)
    last = _train_until_first_save(
        YOLO("yolov8n.yaml"), "r", tmp_path, teacher=str(teacher_pt), data=str(data_yaml),
        unlabeled=str(tmp_path / "u"), epochs=2, kd_teacher_check=False, **tiny,
    )  # fmt: skip
    shutil.copy(files[0], tmp_path / "u" / "added.jpg")
    resumed = YOLO(last)
    resumed.train(trainer=KDTrainer, resume=True)
    assert resumed.trainer.start_epoch == 1 and resumed.trainer.kd_unlabeled == sorted(map(str, files))
    assert torch.load(last, weights_only=False)["kd"]["settings"]["unlabeled"] == str(tmp_path / "u")


def test_an_epoch_covers_every_unlabelled_image(data_yaml, teacher_pt, tiny, tmp_path):
    """kd_unlabeled_sweep (the default): 12 unlabelled images at kd_unlabeled_ratio=0.5 beside 8 labelled ones in
    batches of 4 repeat the labelled images 3 times in an epoch (6 steps, each with 2 unlabelled images), so the epoch
    sees every unlabelled image once; kd_unlabeled_sweep=False keeps one pass over the labelled images (2 steps)."""
    import pickle
    from collections import Counter

    folders = [tmp_path / f"u{k}" for k in range(3)]
    files = sorted(str(p) for f in folders for p in _unlabelled(data_yaml, f))
    common = dict(trainer=Spy, teacher=str(teacher_pt), data=str(data_yaml), unlabeled=[str(f) for f in folders])
    for sweep, steps in ((True, 6), (False, 2)):
        Spy.seen = []
        model = YOLO("yolov8n.yaml")
        model.train(
            **common, kd_unlabeled_ratio=0.5, kd_unlabeled_sweep=sweep, kd_unlabeled_terms="pseudo", epochs=1,
            val=False, project=str(tmp_path), name=f"sweep{sweep}", **tiny,
        )  # fmt: skip
        assert len(Spy.seen) == steps and all(len(lab) == 4 and len(u) == 2 for _, lab, u, *_ in Spy.seen)
        labelled = Counter(f for _, lab, *_ in Spy.seen for f in lab)
        if sweep:
            assert sorted(f for _, _, u, *_ in Spy.seen for f in u) == files  # each unlabelled image once
            assert len(labelled) == 8 and set(labelled.values()) == {3}
            dataset = model.trainer.train_loader.dataset
            assert len(dataset) == 24 and len(dataset.labels) == 8  # the stock labels are untouched
            assert len(pickle.loads(pickle.dumps(dataset))) == 24  # a spawned worker gets the same repeats
        else:
            assert len(labelled) == 8 and set(labelled.values()) == {1}


class Above(KDTrainer):
    """Validation scores the student's EMA above its labeller each epoch; records the labeller's outputs per batch."""

    pseudo: list = []

    def validate(self):
        metrics, fitness = super().validate()
        return metrics, self.kd_labeller.fitness + 0.01

    def preprocess_batch(self, batch):
        batch = super().preprocess_batch(batch)
        kd = batch.get("kd")
        if kd is not None and kd.teacher is not None:
            scores = None if kd.pseudo is None else kd.pseudo["scores"]
            Above.pseudo.append((self.epoch, batch["img"].shape[0] - kd.n_labeled, scores))
        return batch


def test_the_students_ema_labels_once_above_the_teacher(data_yaml, teacher_pt, tiny, tmp_path):
    """kd_pseudo_from=best (with the teacher check off, the labeller validates the teacher itself): epoch 1's
    unlabelled images get their pseudo-labels from the teacher, epoch 2's from epoch 1's EMA, frozen, on those images
    only; the pseudo-label columns stay finite."""
    _unlabelled(data_yaml, tmp_path / "u")
    Above.pseudo = []
    model = YOLO("yolov8n.yaml")
    model.train(
        trainer=Above, teacher=str(teacher_pt), data=str(data_yaml), unlabeled=str(tmp_path / "u"),
        kd_unlabeled_terms="pseudo", kd_pseudo_from="best", kd_teacher_check=False, kd_unlabeled_sweep=False,
        epochs=2, project=str(tmp_path), name="best", **tiny,
    )  # fmt: skip
    labeller = model.trainer.kd_labeller
    assert {e for e, *_ in Above.pseudo} == {0, 1} and labeller.epoch == 2
    assert all(s is None for e, _, s in Above.pseudo if e == 0)
    assert all(s is not None and s.shape[0] == n > 0 and not s.requires_grad for e, n, s in Above.pseudo if e == 1)
    assert not any(p.requires_grad for p in labeller.model.parameters())
    rows = list(csv.DictReader((tmp_path / "best" / "results.csv").open()))
    assert all(math.isfinite(float(r[f"train/up{k}_loss"])) for r in rows for k in ("box", "cls", "dfl"))


class Views(KDTrainer):
    """Records, for every training batch, the images the teacher saw and those the student is given."""

    seen: list = []

    def preprocess_batch(self, batch):
        forward, shown = self.teacher.forward, {}

        def recorded(img):
            shown["img"] = img.clone()
            return forward(img)

        self.teacher.forward = recorded
        batch = super().preprocess_batch(batch)
        self.teacher.forward = forward
        kd = batch.get("kd")
        if kd is not None and kd.teacher is not None:
            Views.seen.append((kd.n_labeled, shown["img"], batch["img"].clone()))
        return batch


def test_the_student_gets_a_strong_view_of_unlabelled_images_only(data_yaml, teacher_pt, tiny, tmp_path):
    """kd_unlabeled_strong=True: the teacher sees the stock (weak) view of every image; the student the same
    labelled images and a changed view of each unlabelled one. Off (the default), both see the same batch."""
    _unlabelled(data_yaml, tmp_path / "u")
    for strong in (True, False):
        Views.seen = []
        YOLO("yolov8n.yaml").train(
            trainer=Views, teacher=str(teacher_pt), data=str(data_yaml), unlabeled=str(tmp_path / "u"),
            kd_unlabeled_strong=strong, kd_teacher_check=False, kd_unlabeled_sweep=False, epochs=1, val=False,
            project=str(tmp_path), name=f"strong{strong}", **tiny,
        )  # fmt: skip
        assert Views.seen
        for n, weak, student in Views.seen:
            assert 0 < n < len(student) and torch.equal(weak[:n], student[:n])
            changed = [not torch.equal(weak[i], student[i]) for i in range(n, len(student))]
            assert all(changed) if strong else not any(changed)


def test_auto_conf_is_the_teachers_max_f1_confidence_on_val(data_yaml, teacher_pt, tiny, tmp_path):
    """kd_pseudo_conf=auto: the plan and the criterion take the confidence at which the teacher's F1 peaks on val, as
    the teacher check measured it (0.5 where that teacher detects nothing); kd_pseudo_low reaches the criterion."""
    from ultralytics.utils.torch_utils import unwrap_model

    from ultralytics_kd.distill.labeller import AUTO_FALLBACK

    _unlabelled(data_yaml, tmp_path / "u")
    model = YOLO("yolov8n.yaml")
    model.train(
        trainer=KDTrainer, teacher=str(teacher_pt), data=str(data_yaml), unlabeled=str(tmp_path / "u"),
        kd_unlabeled_terms="pseudo", kd_pseudo_conf="auto", kd_pseudo_low=0.05, kd_unlabeled_sweep=False, epochs=1,
        val=False, project=str(tmp_path), name="auto", **tiny,
    )  # fmt: skip
    trainer = model.trainer
    measured = trainer.kd_teacher_metrics["max_f1_conf"]
    expected = measured if measured is not None and 0 < measured < 1 else AUTO_FALLBACK
    conf = trainer.kd_unlabeled_plan.pseudo_conf
    criterion = unwrap_model(trainer.model).criterion
    assert isinstance(conf, float) and conf == expected and criterion.pseudo_conf == conf
    assert trainer.kd_unlabeled_plan.pseudo_low == criterion.pseudo_low == 0.05  # kd_pseudo_low reaches the loss
    row = next(csv.DictReader((tmp_path / "auto" / "results.csv").open()))
    assert math.isfinite(float(row["train/upcls_loss"]))
