"""KDDetectionLoss on hand-made inputs: the seeds' formula exactly, the validation path, the guard, the NaN check."""

import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.loss import v8DetectionLoss

from ultralytics_kd.distill import KDBatch, KDDetectionLoss, build_connectors, get_recipe
from ultralytics_kd.distill.losses import ClassBCE, ClassKL, LocalizationDistill
from ultralytics_kd.distill.recorders import FeatureRecorder


@pytest.fixture(scope="module")
def pair():
    """A yolov8n student and a wider yolov8s teacher (2 classes), their raw outputs on 2 random images, and labels."""
    torch.manual_seed(0)
    student = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    student.args = get_cfg()
    teacher = DetectionModel("yolov8s.yaml", nc=2, verbose=False).eval()
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        t_out = teacher(img)[1]
    batch = {
        "img": img,
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0], [0.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.3, 0.2, 0.1], [0.7, 0.6, 0.2, 0.2]]),
    }
    return SimpleNamespace(student=student, teacher=teacher, img=img, t_out=t_out, batch=batch)


def _student_preds(pair):
    pair.student.train()
    return pair.student(pair.img)


def _connectors(pair, name):
    ch_s = [f.shape[1] for f in _student_preds(pair)["feats"]]
    ch_t = [f.shape[1] for f in pair.t_out["feats"]]
    torch.manual_seed(1)
    return {name: build_connectors(ch_s, ch_t)}


def test_seed_recipe_reproduces_the_seeds_formula(pair):
    """total = alpha * yolo + (1 - alpha) * (0.6 * KL + 0.4 * MSE), alpha 0.65, T 4, times batch size."""
    terms, alpha, conf = get_recipe("seed").build()
    assert (alpha, conf, [t.name for t in terms]) == (0.65, False, ["cls_kl", "feat_mse"])
    connectors = _connectors(pair, "feat_mse")
    crit = KDDetectionLoss(pair.student, terms, alpha=alpha, conf_weight=conf, connectors=connectors, max_ratio=0.0)
    preds = _student_preds(pair)
    total, items = crit(preds, {**pair.batch, "kd": KDBatch(teacher=pair.t_out)})

    det, det_items = v8DetectionLoss(pair.student)(preds, pair.batch)
    T = 4.0
    p_t = F.softmax(pair.t_out["scores"] / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(preds["scores"] / T, 1))).sum(1).mean() * T * T
    mse = sum(
        ((a(s) - t) ** 2).mean() for a, s, t in zip(connectors["feat_mse"], preds["feats"], pair.t_out["feats"])
    ) / len(preds["feats"])
    kl, mse = kl.detach(), mse.detach()
    yolo = det.sum() / 2  # per image: v8DetectionLoss returns its loss vector times the batch size (2)
    expected = 0.65 * yolo + 0.35 * (0.6 * kl + 0.4 * mse)
    assert float(total.detach().sum()) / 2 == pytest.approx(float(expected.detach()), rel=1e-5)
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss", "kdkl_loss", "kdmse_loss"]
    assert float(items["kdkl_loss"]) == pytest.approx(float(0.35 * 0.6 * kl), rel=1e-5)
    assert float(items["kdmse_loss"]) == pytest.approx(float(0.35 * 0.4 * mse), rel=1e-5)
    for k in det_items:
        assert float(items[k]) == pytest.approx(float(det_items[k]))


def test_validation_batch_reports_zero_terms(pair):
    """Without teacher outputs (validation) every KD column is 0 and the total is the weighted detection loss."""
    crit = KDDetectionLoss(pair.student, [ClassBCE(), LocalizationDistill()], alpha=0.5)
    preds = _student_preds(pair)
    total, items = crit(preds, pair.batch)
    det, _ = v8DetectionLoss(pair.student)(preds, pair.batch)
    assert float(items["kdcls_loss"]) == 0.0 and float(items["kdld_loss"]) == 0.0
    assert float(total.detach().sum()) == pytest.approx(0.5 * float(det.detach().sum()), rel=1e-6)


def test_schedule_scale_multiplies_terms(pair):
    """``KDBatch.scale`` (warm-up/decay) scales every term."""
    crit = KDDetectionLoss(pair.student, [ClassBCE(weight=1.0, tau=2.0)], max_ratio=0.0)
    preds = _student_preds(pair)
    full = crit(preds, {**pair.batch, "kd": KDBatch(pair.t_out, scale=1.0)})[1]["kdcls_loss"]
    quarter = crit(preds, {**pair.batch, "kd": KDBatch(pair.t_out, scale=0.25)})[1]["kdcls_loss"]
    assert float(quarter) == pytest.approx(0.25 * float(full), rel=1e-6)


def test_guard_caps_each_term_relative_to_detection_loss(pair):
    """With kd_max_ratio r, no term contributes more than r times the (per-image) detection loss."""
    terms = [ClassBCE(weight=1000.0, tau=2.0), LocalizationDistill(weight=1000.0, tau=2.0)]
    crit = KDDetectionLoss(pair.student, terms, max_ratio=0.1)
    preds = _student_preds(pair)
    total, items = crit(preds, {**pair.batch, "kd": KDBatch(pair.t_out)})
    det_per_image = sum(float(items[k]) for k in ("box_loss", "cls_loss", "dfl_loss"))
    for k in ("kdcls_loss", "kdld_loss"):
        assert float(items[k]) == pytest.approx(0.1 * det_per_image, rel=1e-5)
    # the capped term still carries gradient to the student
    pair.student.zero_grad()
    total.sum().backward()
    assert pair.student.model[-1].cv3[0][-1].weight.grad.abs().sum() > 0


def test_conf_weight_focuses_on_confident_anchors(pair):
    """Weighting anchors by teacher confidence changes the value (the weights are not uniform)."""
    preds = _student_preds(pair)
    kd = {**pair.batch, "kd": KDBatch(pair.t_out)}
    plain = KDDetectionLoss(pair.student, [ClassKL(tau=1.0)], conf_weight=False)(preds, kd)[1]["kdkl_loss"]
    weighted = KDDetectionLoss(pair.student, [ClassKL(tau=1.0)], conf_weight=True)(preds, kd)[1]["kdkl_loss"]
    conf = pair.t_out["scores"].sigmoid().amax(1)
    p_t = F.softmax(pair.t_out["scores"], 1)
    kl = (p_t * (p_t.log() - F.log_softmax(preds["scores"], 1))).sum(1)
    assert float(weighted) == pytest.approx(float((kl * conf).sum().detach() / conf.sum()), rel=1e-5)
    assert float(weighted) != pytest.approx(float(plain), rel=1e-3)


def test_non_finite_term_reaches_the_loss_with_a_warning(pair):
    """A NaN/inf in a term is left in the loss, for the stock trainer's NaN recovery (which reads the loss), and is
    reported once per epoch with the term's name and the batch index."""
    import logging

    from ultralytics.utils import LOGGER

    class Capture(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    bad = {**pair.t_out, "scores": torch.full_like(pair.t_out["scores"], float("nan"))}
    crit = KDDetectionLoss(pair.student, [LocalizationDistill(), ClassBCE()])
    handler = Capture()
    LOGGER.addHandler(handler)
    try:
        losses = [crit(_student_preds(pair), {**pair.batch, "kd": KDBatch(bad, epoch=2, index=i)}) for i in (7, 8)]
    finally:
        LOGGER.removeHandler(handler)
    for total, items in losses:
        assert not torch.isfinite(total.sum()) and not math.isfinite(float(items["kdcls_loss"]))
    assert len(handler.messages) == 1 and re.search(r"'cls_bce' is nan at epoch 3, batch 7", handler.messages[0])


def test_feature_term_without_connectors_is_rejected(pair):
    """Feature terms need adapters; building without them is an error, not a silent shape mismatch later."""
    from ultralytics_kd.distill.losses import FeatureMSE

    with pytest.raises(ValueError, match="needs connectors"):
        KDDetectionLoss(pair.student, [FeatureMSE()])


def test_student_recorder_is_popped_and_removed(pair):
    """Custom student layers come from a recorder that the criterion empties and unhooks after use."""
    from ultralytics_kd.distill.losses import FeatureMSE

    layers = [4, 6, 9]  # backbone P3, P4, P5 outputs of yolov8n
    rec = FeatureRecorder(pair.student, layers)
    t_rec = FeatureRecorder(pair.teacher, [4, 6, 9])
    with torch.no_grad(), t_rec:
        pair.teacher(pair.img)
    ch_s = [pair.student.model[i].cv2.conv.out_channels for i in (4, 6)] + [pair.student.model[9].cv2.conv.out_channels]
    ch_t = [f.shape[1] for f in t_rec.features]
    crit = KDDetectionLoss(pair.student, [FeatureMSE()], connectors={"feat_mse": build_connectors(ch_s, ch_t)})
    rec.start()
    preds = _student_preds(pair)
    teacher = {**pair.t_out, "feats": t_rec.features}
    items = crit(preds, {**pair.batch, "kd": KDBatch(teacher, student_recorder=rec)})[1]
    assert float(items["kdmse_loss"]) > 0
    assert all(not pair.student.model[i]._forward_hooks for i in layers)


# label assignment distillation ----------------------------------------------------------------------------------------
def test_teacher_boxes_match_the_stock_decoder(pair):
    """``teacher_boxes`` decodes a teacher's DFL outputs as the teacher's own stock criterion would, in pixels."""
    from ultralytics.utils.tal import make_anchors

    from ultralytics_kd.distill.criterion import teacher_boxes

    pair.teacher.args = get_cfg()
    stock = v8DetectionLoss(pair.teacher)
    anchors, strides = make_anchors(pair.t_out["feats"], stock.stride, 0.5)
    expected = stock.bbox_decode(anchors, pair.t_out["boxes"].permute(0, 2, 1)) * strides
    got = teacher_boxes(pair.t_out["boxes"], _student_preds(pair)["feats"], stock.stride)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_lad_assigns_from_the_teacher(pair):
    """kd_lad: the positives are those the stock assigner picks from the teacher's predictions, not the student's."""
    from ultralytics.utils.tal import make_anchors

    from ultralytics_kd.distill.criterion import TeacherAssigner

    preds = _student_preds(pair)
    stock = v8DetectionLoss(pair.student)
    lad = KDDetectionLoss(pair.student, [], lad=True)
    assert isinstance(lad.assigner, TeacherAssigner)
    kd_batch = {**pair.batch, "kd": KDBatch(pair.t_out)}

    # the reference: the stock assigner called by hand on the teacher's decoded outputs
    pair.teacher.args = get_cfg()
    t_crit = v8DetectionLoss(pair.teacher)
    anchors, strides = make_anchors(pair.t_out["feats"], t_crit.stride, 0.5)
    t_boxes = t_crit.bbox_decode(anchors, pair.t_out["boxes"].permute(0, 2, 1)) * strides
    targets = stock.preprocess(
        torch.cat((pair.batch["batch_idx"].view(-1, 1), pair.batch["cls"], pair.batch["bboxes"]), 1), 2,
        scale_tensor=torch.tensor([64.0, 64.0, 64.0, 64.0]),
    )  # fmt: skip
    labels, gt = targets.split((1, 4), 2)
    expected = stock.assigner(
        pair.t_out["scores"].permute(0, 2, 1).sigmoid(), t_boxes, anchors * strides, labels, gt, gt.sum(2, True).gt(0)
    )

    # what the criterion assigned, read back through a spy on the wrapped assigner
    seen = []
    hook = lad.assigner.assigner.register_forward_hook(lambda m, args, out: seen.append(out))
    total, items = lad(preds, kd_batch)
    hook.remove()
    hook = stock.assigner.register_forward_hook(lambda m, args, out: seen.append(out))
    stock(preds, pair.batch)
    hook.remove()
    (got, own), names = seen, ("labels", "bboxes", "scores", "fg_mask", "gt_idx")
    for name, g, e in zip(names, got, expected):
        torch.testing.assert_close(g, e, msg=f"target {name} differs from the teacher-fed stock assigner's")
    assert not torch.allclose(got[2], own[2])  # the student's own predictions give other target scores
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss"] and torch.isfinite(total).all()

    # gradients still flow into the student only through the stock loss; without a teacher LAD is the stock loss
    without = float(lad(preds, pair.batch)[0].detach().sum())
    assert without == pytest.approx(float(stock(preds, pair.batch)[0].detach().sum()), rel=1e-6)


@pytest.mark.parametrize("settling", [False, True])
def test_settling_feature_terms_train_only_their_adapters(pair, settling):
    """While a student with weights of its own settles in, a feature term's gradient reaches its adapters and never
    the student's features; afterwards it reaches both."""
    from ultralytics_kd.distill.losses import FeatureMSE

    connectors = _connectors(pair, "feat_mse")
    crit = KDDetectionLoss(pair.student, [FeatureMSE()], alpha=0.0, connectors=connectors, max_ratio=0.0)
    preds = _student_preds(pair)
    for f in preds["feats"]:
        f.retain_grad()
    total, _ = crit(preds, {**pair.batch, "kd": KDBatch(pair.t_out, settling=settling)})
    total.sum().backward()
    feat_grad = sum(float(f.grad.abs().sum()) for f in preds["feats"])
    adapter_grad = sum(float(p.grad.abs().sum()) for p in connectors["feat_mse"].parameters())
    assert adapter_grad > 0
    assert (feat_grad == 0.0) if settling else (feat_grad > 0)
