"""What an unlabelled image learns (kd_unlabeled_terms): the plan, the pseudo-labels through the stock NMS and loss,
the dense terms, their columns, and the settings' checks."""

from __future__ import annotations

import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.loss import v8DetectionLoss

from ultralytics_kd.distill import settings
from ultralytics_kd.distill.connectors import build_connectors
from ultralytics_kd.distill.criterion import KDBatch, KDDetectionLoss, teacher_boxes
from ultralytics_kd.distill.losses import ClassBCE, ClassKL, FeatureMSE, LocalizationDistill
from ultralytics_kd.distill.pseudo import pseudo_targets
from ultralytics_kd.distill.settings import check_kd_args
from ultralytics_kd.distill.unlabeled_terms import DEFAULT_UNLABELED_TERMS, plan_unlabeled

NC, BINS = 2, 16
# one confident teacher box: class 1 at the level-0 anchor (x=3, y=4) of a 64 px image (stride 8, an 8x8 grid), its
# sides (left, top, right, bottom) = (1, 1, 2, 1) cells around the anchor point (3.5, 4.5): pixels xyxy (20, 28, 44, 44)
ANCHOR, SIDES, CLS = 4 * 8 + 3, (1, 1, 2, 1), 1
BOX_XYWH_NORM = [32 / 64, 36 / 64, 24 / 64, 16 / 64]


def _model() -> DetectionModel:
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=NC, verbose=False)
    model.args = get_cfg()
    return model.train()


def _preds(model: DetectionModel, bs: int) -> dict:
    """The student's raw training outputs on ``bs`` images of 64 px, scores and boxes as leaves."""
    with torch.no_grad():
        out = model(torch.rand(bs, 3, 64, 64))
    return {"boxes": out["boxes"].clone().requires_grad_(), "scores": out["scores"].clone().requires_grad_(),
            "feats": [f.clone() for f in out["feats"]]}  # fmt: skip


def _teacher(preds: dict, confident: bool = True) -> dict:
    """A hand-made teacher on every image: all scores far below any threshold, except (when ``confident``) the box
    above at ``ANCHOR``, and a second box at anchor 0 at conf sigmoid(-0.5) = 0.38, under the default 0.5."""
    bs, a = preds["scores"].shape[0], preds["scores"].shape[2]
    scores = torch.full((bs, NC, a), -12.0)
    scores[:, 0, 0] = -0.5
    if confident:
        scores[:, CLS, ANCHOR] = 4.0
    boxes = torch.zeros(bs, 4, BINS, a)
    boxes[:, :, 1] = 40.0  # every side 1 cell, as a one-hot DFL distribution
    for side, d in enumerate(SIDES):
        boxes[:, side, :, ANCHOR] = 0.0
        boxes[:, side, d, ANCHOR] = 40.0
    return {"scores": scores.requires_grad_(), "boxes": boxes.view(bs, 4 * BINS, a).requires_grad_(),
            "feats": [torch.randn_like(f).requires_grad_() for f in preds["feats"]]}  # fmt: skip


def _labels(n: int) -> dict:
    return {
        "batch_idx": torch.arange(n, dtype=torch.float32),
        "cls": torch.zeros(n, 1),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]).repeat(n, 1),
    }


def _sliced(preds: dict, sl: slice) -> dict:
    return {"boxes": preds["boxes"][sl], "scores": preds["scores"][sl], "feats": [f[sl] for f in preds["feats"]]}


def test_pseudo_targets_are_the_teachers_confident_box_in_normalised_xywh():
    model = _model()
    preds = _preds(model, 2)
    teacher = _teacher(preds)
    boxes = teacher_boxes(teacher["boxes"], preds["feats"], model.stride)
    assert torch.allclose(boxes[0, ANCHOR], torch.tensor([20.0, 28.0, 44.0, 44.0]), atol=1e-4)
    t = pseudo_targets(teacher["scores"], boxes, (64, 64), conf=0.5)
    assert t["batch_idx"].tolist() == [0.0, 1.0] and t["cls"].tolist() == [[CLS], [CLS]]  # the 0.38 box is left out
    assert torch.allclose(t["bboxes"], torch.tensor([BOX_XYWH_NORM] * 2), atol=1e-6)
    low = pseudo_targets(teacher["scores"], boxes, (64, 64), conf=0.3)  # now the second box passes too
    assert sorted(low["cls"].flatten().tolist()) == [0.0, 0.0, 1.0, 1.0]


def test_pseudo_loss_is_the_stock_loss_on_the_pseudo_label():
    """Image 0 labelled, images 1-2 unlabelled: the up*_loss columns and their part of the loss vector are the stock
    v8DetectionLoss of images 1-2 with the teacher's box as their label, called independently."""
    model = _model()
    preds = _preds(model, 3)
    teacher = _teacher(preds)
    plan = plan_unlabeled("pseudo", 0.5, [], tau=2.0)
    crit = KDDetectionLoss(model, [], max_ratio=0.0, unlabeled=plan)
    total, items = crit.loss(preds, {**_labels(1), "kd": KDBatch(teacher, n_labeled=1)})
    label = {"batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [1.0]]),
             "bboxes": torch.tensor([BOX_XYWH_NORM] * 2)}  # fmt: skip
    expected, stock_items = v8DetectionLoss(model).loss(_sliced(preds, slice(1, 3)), label)
    assert total.shape == (6,) and torch.allclose(total[3:], expected, rtol=1e-5, atol=1e-6)
    for name in ("box_loss", "cls_loss", "dfl_loss"):
        assert torch.allclose(items[f"up{name}"], stock_items[name], rtol=1e-5, atol=1e-6)
    assert stock_items["box_loss"] > 0  # the label was assigned: not the empty set's 0
    alone, _ = v8DetectionLoss(model).loss(_sliced(preds, slice(0, 1)), _labels(1))
    assert torch.allclose(total[:3], alone)  # the labelled image's detection loss is untouched


def test_a_labeller_other_than_the_teacher_gives_the_pseudo_labels():
    """KDBatch.pseudo (kd_pseudo_from=best: the student's EMA, on the unlabelled images only) replaces the teacher's
    boxes as the labels of the stock loss: a teacher with no box above the threshold and a labeller with the box give
    the loss of the box, and the labelled image's loss stays the stock one."""
    model = _model()
    preds = _preds(model, 3)
    quiet, labeller = _teacher(preds, confident=False), _sliced(_teacher(preds), slice(1, 3))
    crit = KDDetectionLoss(model, [], max_ratio=0.0, unlabeled=plan_unlabeled("pseudo", 0.5, [], tau=2.0))
    total, items = crit.loss(preds, {**_labels(1), "kd": KDBatch(quiet, n_labeled=1, pseudo=labeller)})
    label = {"batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [1.0]]),
             "bboxes": torch.tensor([BOX_XYWH_NORM] * 2)}  # fmt: skip
    expected, _ = v8DetectionLoss(model).loss(_sliced(preds, slice(1, 3)), label)
    assert torch.allclose(total[3:], expected, rtol=1e-5, atol=1e-6) and items["upbox_loss"] > 0
    assert torch.allclose(total[:3], v8DetectionLoss(model).loss(_sliced(preds, slice(0, 1)), _labels(1))[0])
    alone = crit.loss(_sliced(preds, slice(1, 3)), {**_labels(0), "kd": KDBatch(quiet, n_labeled=0, pseudo=labeller)})
    assert torch.allclose(alone[0][3:], expected, rtol=1e-5, atol=1e-6)  # a batch of unlabelled images only


def test_uncertain_boxes_take_no_background_loss():
    """kd_pseudo_low=0.3: the teacher's 0.38 box at anchor 0 (below kd_pseudo_conf 0.5) is uncertain. The student's
    class scores at the anchors inside it get no gradient, where without the band the stock loss pushes them to
    background; every other anchor's gradient, and the box and DFL losses, are as without the band."""
    from ultralytics.utils.tal import make_anchors

    from ultralytics_kd.distill.pseudo import uncertain_anchors

    model = _model()
    grads, items, base = [], [], _preds(model, 2)
    for low in (0.0, 0.3):
        preds = {**base, **{k: base[k].detach().clone().requires_grad_() for k in ("boxes", "scores")}}
        plan = plan_unlabeled("pseudo", 0.5, [], 2.0, pseudo_low=low)
        total, it = KDDetectionLoss(model, [], max_ratio=0.0, unlabeled=plan).loss(
            preds, {**_labels(1), "kd": KDBatch(_teacher(preds), n_labeled=1)}
        )
        total[3:].sum().backward()
        grads.append(preds["scores"].grad[1])
        items.append(it)
    teacher = _teacher(preds)
    points, strides = make_anchors(preds["feats"], model.stride, 0.5)
    boxes = teacher_boxes(teacher["boxes"], preds["feats"], model.stride)
    unsure = uncertain_anchors(teacher["scores"], boxes, points * strides, 0.3, 0.5)[1]
    assert 0 < int(unsure.sum()) < 10 and unsure[0] and not unsure[ANCHOR]  # the anchors around anchor 0 only
    assert grads[0][:, unsure].abs().sum() > 0 and grads[1][:, unsure].abs().sum() == 0
    assert torch.allclose(grads[0][:, ~unsure], grads[1][:, ~unsure])
    assert items[0]["upbox_loss"] == items[1]["upbox_loss"] and items[0]["updfl_loss"] == items[1]["updfl_loss"]


def test_no_teacher_box_above_the_threshold_is_the_stock_loss_of_a_background_image():
    model = _model()
    preds = _preds(model, 2)
    teacher = _teacher(preds, confident=False)
    crit = KDDetectionLoss(model, [], max_ratio=0.0, unlabeled=plan_unlabeled("pseudo", 0.5, [], tau=2.0))
    total, items = crit.loss(preds, {**_labels(1), "kd": KDBatch(teacher, n_labeled=1)})
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
    expected, _ = v8DetectionLoss(model).loss(_sliced(preds, slice(1, 2)), empty)
    assert torch.isfinite(total).all() and all(torch.isfinite(v).all() for v in items.values())
    assert torch.allclose(total[3:], expected) and items["upbox_loss"] == 0 and items["upcls_loss"] > 0


def test_gradients_reach_the_student_never_the_teacher():
    model = _model()
    preds = _preds(model, 3)
    teacher = _teacher(preds)
    ch = [f.shape[1] for f in preds["feats"]]
    mse = FeatureMSE()
    plan = plan_unlabeled("dense+pseudo", 0.5, [mse], tau=2.0)
    crit = KDDetectionLoss(
        model, [mse], max_ratio=0.0, connectors={"feat_mse": build_connectors(ch, ch, mse.connector)}, unlabeled=plan
    )
    total, _ = crit.loss(preds, {**_labels(1), "kd": KDBatch(teacher, n_labeled=1)})
    total[3:].sum().backward()  # every term, labelled and unlabelled, and the pseudo-labels
    assert all(t.grad is None for t in (teacher["scores"], teacher["boxes"], *teacher["feats"]))
    assert (preds["scores"].grad[1:].abs().sum(dim=(1, 2)) > 0).all()
    assert (preds["boxes"].grad[1:].abs().sum(dim=(1, 2)) > 0).all()


def test_dense_adds_class_scores_and_bins_on_unlabelled_images_only():
    """Recipe cls_kl + feat_mse: the labelled images keep those two; the unlabelled ones learn feat_mse (a feature
    term of the recipe), cls_bce and ld (Dense Teacher's), and not cls_kl; each kind under its own columns."""
    model = _model()
    preds = _preds(model, 3)
    teacher = _teacher(preds)
    teacher["scores"] = torch.randn_like(preds["scores"])
    ch = [f.shape[1] for f in preds["feats"]]
    kl, mse = ClassKL(tau=2.0), FeatureMSE()
    default = plan_unlabeled(None, 0.5, [kl, mse], tau=2.0)
    assert default.mode == DEFAULT_UNLABELED_TERMS and not default.chosen
    plan = plan_unlabeled("dense", 0.5, [kl, mse], tau=2.0)
    assert plan.mode == "dense" and plan.chosen
    assert [t.name for t in plan.terms] == ["feat_mse", "cls_bce", "ld"] and plan.terms[0] is mse
    adapters = {"feat_mse": build_connectors(ch, ch, mse.connector)}
    crit = KDDetectionLoss(model, [kl, mse], max_ratio=0.0, connectors=adapters, unlabeled=plan)
    total, items = crit.loss(preds, {**_labels(1), "kd": KDBatch(teacher, n_labeled=1)})
    kd_cols = [k for k in items if k not in {"box_loss", "cls_loss", "dfl_loss"}]
    assert kd_cols == ["kdkl_loss", "kdmse_loss", "umse_loss", "ucls_loss", "uld_loss"] and total.shape == (8,)
    s, t = preds["scores"][1:].detach(), teacher["scores"][1:]
    b, tb = preds["boxes"][1:].detach(), teacher["boxes"][1:]
    assert torch.allclose(items["ucls_loss"], ClassBCE(tau=2.0)(s, t))
    assert torch.allclose(items["uld_loss"], LocalizationDistill(tau=2.0)(b, tb))
    assert torch.allclose(total[6], ClassBCE(tau=2.0)(s, t) * 2)  # the stock contract: times the images it covers


def test_the_plans_terms():
    ld = LocalizationDistill(weight=0.5, tau=3.0)
    mse = FeatureMSE()
    dense = plan_unlabeled("dense", 0.5, [ld, mse], tau=3.0)
    assert [t.name for t in dense.terms] == ["ld", "feat_mse", "cls_bce"] and dense.terms[0] is ld  # reused, once
    assert dense.terms[2].tau == 3.0 and dense.pseudo_conf is None and dense.chosen
    no_bins = plan_unlabeled("dense+pseudo", 0.4, [mse], tau=2.0, ld_ok=False)
    assert [t.name for t in no_bins.terms] == ["feat_mse", "cls_bce"] and no_bins.pseudo_conf == 0.4
    assert "ld off" in no_bins.describe() and "set" in no_bins.describe()
    pseudo = plan_unlabeled("pseudo", 0.5, [ld, mse], tau=2.0)
    assert pseudo.terms == [] and pseudo.active(mimic=False) and not pseudo.active(mimic=True)
    recipe = plan_unlabeled("recipe", 0.5, [ld, mse], tau=2.0)
    assert recipe.terms == [ld, mse] and recipe.pseudo_conf is None
    assert "the default" in plan_unlabeled(None, 0.5, [], tau=2.0).describe()


def test_a_run_with_unlabelled_images_has_their_columns_on_every_batch():
    """The trainer names its columns after the first batch, which may hold no unlabelled image (kd_warmup's first
    batch has no teacher): with a plan the u* columns are there, at 0; without one they never are."""
    model = _model()
    preds = _preds(model, 2)
    plan = plan_unlabeled("dense+pseudo", 0.5, [], tau=2.0)
    crit = KDDetectionLoss(model, [], unlabeled=plan)
    for kd in (KDBatch(None), KDBatch(_teacher(preds))):
        total, items = crit.loss(preds, {**_labels(2), "kd": kd})
        u = {k: v for k, v in items.items() if k.startswith("u")}
        assert list(u) == ["ucls_loss", "uld_loss", "upbox_loss", "upcls_loss", "updfl_loss"]
        assert all(v == 0 for v in u.values()) and total.shape == (3 + 5,)
    _, items = KDDetectionLoss(model, []).loss(preds, {**_labels(2), "kd": KDBatch(_teacher(preds))})
    assert not [k for k in items if k.startswith("u")]


@pytest.mark.parametrize(
    "args, match",
    [
        ({"kd_unlabeled_terms": "soft"}, r"'soft' must be one of \['dense', 'pseudo', 'dense\+pseudo', 'recipe'\]"),
        ({"kd_unlabeled_terms": "pseudo+dense"}, r"one of \['dense'"),
        ({"kd_pseudo_conf": 0}, r"kd_pseudo_conf=0.0 must be in \(0, 1\)"),
        ({"kd_pseudo_conf": 1.5}, r"kd_pseudo_conf=1.5 must be in \(0, 1\)"),
        ({"kd_pseudo_conf": None}, r"kd_pseudo_conf=None must be in \(0, 1\)"),
        ({"kd_pseudo_conf": "high"}, "must be a number"),
        ({"kd_pseudo_conf": "Auto"}, "must be a number"),
        ({"kd_pseudo_low": 1.0}, r"kd_pseudo_low=1.0 must be in \[0, 1\)"),
        ({"kd_pseudo_from": "student"}, r"kd_pseudo_from='student' must be one of \['teacher', 'best'\]"),
    ],
)  # fmt: skip
def test_bad_settings_name_the_allowed_values(args, match):
    with pytest.raises(ValueError, match=match):
        check_kd_args(args)
    check_kd_args({"kd_unlabeled_terms": "dense+pseudo", "kd_pseudo_conf": 0.25, "kd_pseudo_from": "best"})
    check_kd_args({"kd_unlabeled_terms": "pseudo", "kd_pseudo_conf": "auto"})


@pytest.mark.parametrize("terms", ["dense", "recipe", None])
def test_a_pseudo_option_without_pseudo_labels_is_refused(terms, monkeypatch):
    """kd_pseudo_* settings do nothing where the terms take no pseudo-labels: refused with the fix, the default
    terms (None) named as such; with pseudo-labels they pass."""
    monkeypatch.setattr(settings, "DEFAULT_UNLABELED_TERMS", "dense")
    for option in ({"kd_pseudo_conf": "auto"}, {"kd_pseudo_low": 0.1}, {"kd_pseudo_from": "best"}):
        key = next(iter(option))
        default = r" \(the default\)" if terms is None else ""
        fix = rf"kd_unlabeled_terms={terms or 'dense'}{default} takes none: add "
        with pytest.raises(ValueError, match=rf"{key}=.*sets the pseudo-labels.*{fix}kd_unlabeled_terms=pseudo"):
            check_kd_args({"kd_unlabeled_terms": terms, **option})
        check_kd_args({"kd_unlabeled_terms": "pseudo", **option})
        check_kd_args({"kd_unlabeled_terms": "dense+pseudo", **option})
