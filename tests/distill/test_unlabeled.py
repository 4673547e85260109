"""Images without labels: the source checks, the merged batch, and a criterion whose stock loss never sees them."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.loss import v8DetectionLoss

from ultralytics_kd.distill.criterion import KDBatch, KDDetectionLoss
from ultralytics_kd.distill.losses import ClassBCE
from ultralytics_kd.distill.unlabeled import find_unlabeled, merge_unlabeled


def _images(folder: Path, n: int, labels: bool = False) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        f = folder / f"im{i}.png"
        cv2.imwrite(str(f), np.full((32, 32, 3), 10 * i, np.uint8))
        if labels:
            f.with_suffix(".txt").write_text("0 0.5 0.5 0.2 0.2\n")
        out.append(f)
    return out


@pytest.fixture
def data(tmp_path) -> dict:
    train = _images(tmp_path / "d" / "train", 2, labels=True)
    return {"path": str(tmp_path / "d"), "train": str(train[0].parent)}


def test_sources_folder_list_and_data_key(tmp_path, data):
    a = _images(tmp_path / "u1", 2)
    b = _images(tmp_path / "u2" / "nested", 1)
    (tmp_path / "u1" / "notes.md").write_text("not an image, ignored in a folder as Ultralytics ignores it")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{b[0]}\n./u1/im0.png\n")
    expect = sorted(str(f.resolve()) for f in (*a, *b))
    assert find_unlabeled([str(tmp_path / "u1"), str(tmp_path / "u2")], data) == expect
    assert find_unlabeled(str(listed), data) == sorted([str(b[0]), str(a[0])])
    assert find_unlabeled(None, {**data, "unlabeled": str(tmp_path / "u1")}) == expect[:2]
    assert find_unlabeled(None, data) == []


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("missing", FileNotFoundError, "unlabeled='.*nope' not found"),
        ("empty", ValueError, "holds no images"),
        ("not_image", ValueError, "lists 1 file.* that are not images, e.g. '.*notes.md'"),
        ("listed_missing", ValueError, "lists 1 missing file"),
        ("has_label", ValueError, "1 unlabelled image.* have a label file, e.g. '.*im0.png'.*belongs in"),
        ("in_train", ValueError, "also training images"),
        ("single_file", ValueError, "neither a folder nor a .txt list"),
    ],
)
def test_bad_sources_name_the_problem(case, error, match, tmp_path, data):
    u = tmp_path / "u"
    _images(u, 2)
    source = str(u)
    if case == "missing":
        source = str(tmp_path / "nope")
    elif case == "empty":
        source = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    elif case in {"not_image", "listed_missing"}:
        name = "notes.md" if case == "not_image" else "gone.png"
        (u / "notes.md").write_text("x")
        (tmp_path / "l.txt").write_text(f"{u / 'im0.png'}\n{u / name}\n")
        source = str(tmp_path / "l.txt")
    elif case == "has_label":
        (u / "im0.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    elif case == "in_train":
        source = data["train"]
        for f in Path(source).glob("*.txt"):
            f.unlink()  # images without label files, but listed in train: still refused
    elif case == "single_file":
        source = str(u / "im0.png")
    with pytest.raises(error, match=match):
        find_unlabeled(source, data)


def test_merge_keeps_the_labels_of_the_labelled_images():
    lab = {
        "img": torch.ones(2, 3, 8, 8, dtype=torch.uint8),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.rand(2, 4),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "im_file": ("a.jpg", "b.jpg"),
    }
    unl = {"img": torch.zeros(3, 3, 8, 8, dtype=torch.uint8), "im_file": ("u0", "u1", "u2"), "cls": torch.zeros(0, 1)}
    merged, n = merge_unlabeled(lab, unl)
    assert n == 2 and merged["img"].shape[0] == 5 and merged["img"][2:].sum() == 0
    assert merged["im_file"] == ("a.jpg", "b.jpg", "u0", "u1", "u2")
    assert merged["cls"] is lab["cls"] and merged["batch_idx"].max() == 1  # no target points at an unlabelled image
    with pytest.raises(ValueError, match="rect=False"):
        merge_unlabeled(lab, {"img": torch.zeros(1, 3, 8, 16, dtype=torch.uint8)})


def _setup(nc: int = 2, bs: int = 3, seed: int = 0):
    """A yolov8n student's raw training outputs on ``bs`` images, as leaves, and a teacher's of the same shapes."""
    torch.manual_seed(seed)
    model = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    model.args = get_cfg()
    model.train()
    with torch.no_grad():
        out = model(torch.rand(bs, 3, 64, 64))
    preds = {k: (v.clone().requires_grad_() if k != "feats" else [f.clone() for f in v]) for k, v in out.items()}
    teacher = {k: torch.randn_like(out[k]) for k in ("scores", "boxes")}
    teacher["feats"] = out["feats"]
    return model, preds, teacher


def _labels(bs_labelled: int) -> dict:
    """One object in each labelled image (a box in the middle, class 0)."""
    return {
        "batch_idx": torch.arange(bs_labelled, dtype=torch.float32),
        "cls": torch.zeros(bs_labelled, 1),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]).repeat(bs_labelled, 1),
    }


def test_an_unlabelled_image_never_reaches_the_stock_loss():
    """Images 0-1 have labels, image 2 has none: the detection loss is the stock loss of images 0-1 alone (which the
    whole batch's stock loss is not: it would push image 2 to background), and none of its gradient reaches image 2;
    the KD term reaches every image and reports each kind under its own column."""
    model, preds, teacher = _setup()
    batch = _labels(2)
    crit = KDDetectionLoss(model, [ClassBCE(tau=1.0)], max_ratio=0.0)
    total, items = crit.loss(preds, {**batch, "kd": KDBatch(teacher, n_labeled=2)})
    stock = v8DetectionLoss(model)
    first_two = {"boxes": preds["boxes"][:2], "scores": preds["scores"][:2], "feats": [f[:2] for f in preds["feats"]]}
    expected, _ = stock.loss(first_two, batch)
    whole, _ = stock.loss(preds, batch)
    assert torch.allclose(total[:3], expected) and not torch.allclose(whole, expected)
    assert set(items) >= {"box_loss", "cls_loss", "dfl_loss", "kdcls_loss", "ucls_loss"}
    det_grad = torch.autograd.grad(total[:3].sum(), preds["scores"], retain_graph=True)[0]
    assert det_grad[2].abs().sum() == 0 and det_grad[:2].abs().sum() > 0
    kd_grad = torch.autograd.grad(total[3:].sum(), preds["scores"])[0]
    assert (kd_grad.abs().sum(dim=(1, 2)) > 0).all()
    # the columns are each kind's own mean: the labelled images' value is the term on them alone
    alone = ClassBCE(tau=1.0)(preds["scores"][:2], teacher["scores"][:2])
    assert torch.allclose(items["kdcls_loss"], alone.detach())
    assert torch.allclose(total[3], alone * 2)


def test_a_batch_of_unlabelled_images_only_is_finite_and_distils():
    """No labelled image (and a teacher that sees nothing above any threshold): no detection loss, the KD term on
    every image, every value finite, under the default cap (which has no detection loss to cap by)."""
    model, preds, teacher = _setup(bs=2)
    teacher["scores"] = torch.full_like(teacher["scores"], -20.0)
    crit = KDDetectionLoss(model, [ClassBCE(tau=1.0)], max_ratio=1.0)
    total, items = crit.loss(preds, {**_labels(0), "kd": KDBatch(teacher, n_labeled=0)})
    assert torch.isfinite(total).all() and all(torch.isfinite(v).all() for v in items.values())
    assert total[:3].abs().sum() == 0 and items["box_loss"] == 0 and items["kdcls_loss"] == 0
    assert items["ucls_loss"] > 0 and total.sum().requires_grad
    assert torch.allclose(total[-1], ClassBCE(tau=1.0)(preds["scores"], teacher["scores"]) * 2)


def test_without_unlabelled_images_the_columns_are_the_old_ones():
    model, preds, teacher = _setup(bs=2)
    crit = KDDetectionLoss(model, [ClassBCE(tau=1.0)], max_ratio=0.0)
    total, items = crit.loss(preds, {**_labels(2), "kd": KDBatch(teacher)})
    assert "ucls_loss" not in items and total.shape == (4,)


def test_synth_holds_back_labels(tmp_path):
    from ultralytics_kd.data.synth import make_synthetic_dataset

    yaml_path = make_synthetic_dataset(tmp_path / "s", n=20, imgsz=64, unlabeled_frac=0.5)
    root = yaml_path.parent
    held = sorted(p.name for p in (root / "images" / "unlabeled").glob("*.png"))
    assert len(held) == round(0.5 * (20 - 4 - 2)) and not (root / "labels" / "unlabeled").exists()
    assert sorted(p.stem for p in (root / "labels_hidden" / "unlabeled").glob("*.txt")) == [h[:-4] for h in held]
    data = {"path": str(root), "train": str(root / "images" / "train"), "unlabeled": "images/unlabeled"}
    assert [Path(f).name for f in find_unlabeled(None, data)] == held  # the data YAML's key is the default source
    shutil.rmtree(root)
