"""KDDetectionLoss: the stock YOLO detection loss plus a recipe of distillation terms.

It keeps Ultralytics' 8.4 criterion contract, ``(loss_vector * batch_size, {name: detached value})``: the trainer sums
the vector for backward and derives its loss columns from the dict on the first batch, so every term's column reaches
the progress bar, results.csv and results.png with no special case.

The teacher is not held here. The trainer runs it on each training batch and passes its outputs in ``batch["kd"]``
(a ``KDBatch``); the model's criterion is deep-copied into the EMA and pickled with it, and nothing that heavy should
travel along. A batch without ``"kd"`` (validation) reports every term as 0.

Label assignment distillation (``lad=True``; Nguyen et al., "Improving Object Detection by Label Assignment
Distillation", WACV 2022, https://arxiv.org/abs/2108.10520) is not a loss term: the stock task-aligned assigner picks
the student's positive anchors and their targets from the teacher's predicted scores and boxes instead of the student's.
It adds no loss column and cannot outweigh the detection loss, since it only changes which anchors that loss trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from ultralytics.utils import LOGGER
from ultralytics.utils.loss import E2ELoss, v8DetectionLoss
from ultralytics.utils.tal import dist2bbox, make_anchors

from ultralytics_kd.compat import require
from ultralytics_kd.distill.losses import KDTerm
from ultralytics_kd.distill.losses.box import expected_sides
from ultralytics_kd.distill.pseudo import pseudo_item, pseudo_targets, uncertain_anchors
from ultralytics_kd.distill.recorders import FeatureRecorder
from ultralytics_kd.distill.unlabeled_terms import UnlabeledPlan

__all__ = [
    "KDBatch",
    "KDDetectionLoss",
    "KDE2ELoss",
    "TeacherAssigner",
    "install_criterion",
    "teacher_boxes",
    "unlabeled_item",
]


@dataclass
class KDBatch:
    """What one training batch contributes to distillation.

    Attributes:
        teacher (dict | None): Teacher outputs ``{"boxes", "scores", "feats"}``; None when distillation is off.
        scale (float): Schedule multiplier for every term (warm-up, decay, off).
        epoch (int): Epoch index, for error messages.
        index (int): Batch index within the epoch, for error messages.
        student_recorder (FeatureRecorder | None): Hooks on the student's custom feature layers, or None to use the
            Detect head's inputs.
        mimic (bool): A feature-mimicking batch (``kd_init=mimic`` or ``graft``): only the ``"mimic"``-stage terms
            train, the detection loss and every other term weigh 0.
        entry_recorder (FeatureRecorder | None): Hooks on the student's backbone outputs during a graft's stage, read
            by the ``"entries"`` terms; the teacher's are under ``teacher["entries"]``.
        n_labeled (int | None): With ``unlabeled=``: the batch's first ``n_labeled`` images have labels, the rest have
            none (``distill/unlabeled.py``); the stock loss reads the first ones only, and every term reports on
            each kind apart. None: every image is labelled.
        settling (bool): Within the first ``kd_settle`` epochs (``schedule.batch_scale``): the feature terms read the
            student's features detached, so that only their adapters learn.
        pseudo (dict | None): ``{"boxes", "scores"}`` of the model labelling the unlabelled images when it is not the
            teacher (``distill/labeller.py``), for those images only; None: the teacher's outputs give the labels.
    """

    teacher: dict[str, Any] | None
    scale: float = 1.0
    epoch: int = 0
    index: int = 0
    student_recorder: FeatureRecorder | None = None
    mimic: bool = False
    entry_recorder: FeatureRecorder | None = None
    n_labeled: int | None = None
    settling: bool = False
    pseudo: dict[str, Any] | None = None


class TeacherAssigner(nn.Module):
    """The stock assigner, fed the teacher's predictions when the call passes them (label assignment distillation).

    The criterion passes them through the stock ``get_assigned_targets_and_loss(..., **assign_kwargs)``, so nothing of
    a batch is stored on the criterion, which is copied into the EMA and pickled with it.

    Args:
        assigner (nn.Module): The criterion's ``TaskAlignedAssigner``.
    """

    def __init__(self, assigner: nn.Module):
        """Wrap the assigner."""
        super().__init__()
        self.assigner = assigner

    def forward(
        self,
        pd_scores: torch.Tensor,
        pd_bboxes: torch.Tensor,
        *args,
        teacher: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ):
        """Assign as the stock assigner does, from ``teacher`` = (scores (B, A, nc) as probabilities, boxes (B, A, 4)
        in pixel xyxy) instead of the student's predictions when given."""
        if teacher is not None:
            pd_scores, pd_bboxes = teacher[0].to(pd_scores.dtype), teacher[1].to(pd_bboxes.dtype)
        return self.assigner(pd_scores, pd_bboxes, *args, **kwargs)


def teacher_boxes(raw: torch.Tensor, feats: list[torch.Tensor], strides: torch.Tensor) -> torch.Tensor:
    """Decode a teacher's raw box outputs (B, 4 * reg_max, A) into pixel xyxy boxes (B, A, 4).

    The teacher's own ``reg_max`` is read from the channel count (1 means plain distances, as in YOLO26 heads), so a
    teacher with other DFL bins than the student still decodes; the anchors are the student's, which the trainer has
    checked share the teacher's strides and levels.
    """
    anchor_points, stride_tensor = make_anchors(feats, strides, 0.5)
    return dist2bbox(expected_sides(raw), anchor_points.float(), xywh=False) * stride_tensor.float()


def unlabeled_item(item: str) -> str:
    """The column of a term's value on unlabelled images: ``kdcls_loss`` -> ``ucls_loss`` (the progress bar's columns
    are 11 characters wide); the stock loss on their pseudo-labels reports under ``pseudo.pseudo_item``."""
    return "u" + item.removeprefix("kd")


def _tensors(x: Any, fn) -> Any:
    """``fn`` applied to every tensor of ``x``: tensors and lists of them, inside dicts too; anything else as is."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: _tensors(v, fn) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_tensors(v, fn) for v in x)
    return x


def _take(x: Any, sl: slice, bs: int) -> Any:
    """``x`` restricted to the images ``sl`` of a batch of ``bs``."""
    return _tensors(x, lambda v: v[sl] if v.dim() and v.shape[0] == bs else v)


class _KDTerms:
    """The distillation half shared by the one-to-many and the end-to-end criteria."""

    def _init_kd(self, terms, alpha, conf_weight, connectors, max_ratio, unlabeled: UnlabeledPlan | None) -> None:
        self.terms = nn.ModuleList(terms)
        # without a plan, an unlabelled image (in a hand-made batch) learns the recipe's terms, and its columns come
        # only with it; a run with unlabelled images has their columns on every batch, which the trainer's first batch
        # names (a warm-up's first batch has none)
        self.u_terms = nn.ModuleList(unlabeled.terms) if unlabeled is not None else self.terms
        self.pseudo_conf = unlabeled.pseudo_conf if unlabeled is not None else None
        self.pseudo_low = unlabeled.pseudo_low if unlabeled is not None else 0.0
        self.u_columns = unlabeled is not None
        for ts in (self.terms, self.u_terms):
            items = [t.item for t in ts]
            if len(set(items)) != len(items):
                raise ValueError(f"two terms report under the same column: {items}")
        self.alpha = float(alpha)
        self.conf_weight = conf_weight
        self.connectors = nn.ModuleDict(connectors or {})
        self.max_ratio = float(max_ratio)
        self._warned_epoch = None  # the last epoch a non-finite term was reported in
        for t in [*self.terms, *self.u_terms]:
            if t.source == "feats" and t.name not in self.connectors:
                raise ValueError(f"feature term '{t.name}' needs connectors (one adapter per level)")

    def _add_kd(
        self, det: torch.Tensor, items: dict, preds: dict[str, Any], batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Append the terms to the stock (loss vector * batch size, items) pair; ``preds`` is the one-to-many dict.

        With unlabelled images (``KDBatch.n_labeled``), ``det`` covers the labelled images only; the labelled images
        learn the recipe's terms, the unlabelled ones their plan's (``unlabeled_terms.py``): terms under
        ``unlabeled_item(term.item)``, the stock loss on pseudo-labels under ``pseudo_item``.
        """
        bs = preds["scores"].shape[0]
        kd: KDBatch | None = batch.get("kd")
        n = bs if kd is None or kd.n_labeled is None else kd.n_labeled
        parts = [(slice(0, n), n, [t.item for t in self.terms], list(self.terms), False)]
        if self.u_columns or (kd is not None and n != bs):
            pseudo = self.pseudo_conf is not None
            names = [unlabeled_item(t.item) for t in self.u_terms]
            names += [pseudo_item(k) for k in self._one2many().loss_names] if pseudo else []
            parts.append((slice(n, bs), bs - n, names, list(self.u_terms), pseudo))
        taught = kd is not None and kd.teacher is not None
        if taught:
            student, teacher = self._student(preds, kd), _tensors(kd.teacher, torch.Tensor.detach)  # a frozen teacher
        else:
            for rec in (kd.student_recorder, kd.entry_recorder) if kd is not None else ():
                if rec is not None:
                    rec.stop()
        items, vecs = dict(items), []  # the stock loss's dict stays as it returned it
        per_image = det.detach().sum() / n if n else None  # the cap's reference: the labelled images' loss
        for sl, k, names, terms, pseudo in parts:
            if not (taught and k and names):
                vec = det.new_zeros(len(names))
            else:
                whole = k == bs  # one kind fills the batch: no slicing
                s, t = (student, teacher) if whole else (_take(student, sl, bs), _take(teacher, sl, bs))
                labeller = t if kd.pseudo is None else kd.pseudo  # kd.pseudo covers the unlabelled images only
                extra = self._pseudo(preds if whole else _take(preds, sl, bs), labeller, kd) if pseudo else None
                vec = self._terms(terms, names, s, t, kd, per_image, preds["feats"], extra)
            items.update(zip(names, vec.detach()))
            vecs.append(vec * k)
        alpha = 0.0 if kd is not None and kd.mimic else self.alpha  # the mimic stage trains the features alone
        return torch.cat([det * alpha, *vecs]), items

    def _one2many(self) -> v8DetectionLoss:
        """The stock one-to-many loss: the criterion itself, or an end-to-end criterion's ``one2many``."""
        return self if isinstance(self, v8DetectionLoss) else self.one2many

    def _pseudo(self, preds: dict[str, Any], teacher: dict[str, Any], kd: KDBatch) -> torch.Tensor:
        """The stock (box, cls, dfl) loss of ``preds`` on the labeller's boxes above ``pseudo_conf`` (``pseudo.py``),
        not multiplied by the batch size; 0 in a mimic stage, which leaves the stock loss out."""
        stock = self._one2many()
        if kd.mimic:
            return preds["scores"].new_zeros(len(stock.loss_names), dtype=torch.float32)
        boxes = teacher_boxes(teacher["boxes"], preds["feats"], stock.stride)
        h, w = (int(x * stock.stride[0]) for x in preds["feats"][0].shape[2:])  # as the stock loss derives imgsz
        labels = pseudo_targets(teacher["scores"], boxes, (h, w), self.pseudo_conf)
        if self.pseudo_low:  # uncertain boxes: their anchors' class scores take no gradient, so no background push
            points, strides = make_anchors(preds["feats"], stock.stride, 0.5)
            unsure = uncertain_anchors(teacher["scores"], boxes, points * strides, self.pseudo_low, self.pseudo_conf)
            preds = {**preds, "scores": torch.where(unsure[:, None], preds["scores"].detach(), preds["scores"])}
        return stock.get_assigned_targets_and_loss(preds, labels)[1].float()

    @staticmethod
    def _student(preds: dict[str, Any], kd: KDBatch) -> dict[str, Any]:
        """The student's side of every term (features from the recorders where they are hooked)."""
        feats = kd.student_recorder.pop() if kd.student_recorder is not None else preds["feats"]
        entries = kd.entry_recorder.pop() if kd.entry_recorder is not None else None
        return {"scores": preds["scores"], "boxes": preds["boxes"], "feats": feats, "entries": entries}

    def _terms(
        self,
        terms: list[KDTerm],
        names: list[str],
        student: dict[str, Any],
        teacher: dict[str, Any],
        kd: KDBatch,
        det_per_image: torch.Tensor | None,
        detect_feats: list[torch.Tensor],
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Evaluate ``terms`` in fp32, append ``extra`` (the pseudo-label loss), and apply schedule and cap (none
        without a detection loss to cap by); ``names`` are the columns of both, for the warning."""
        sizes = [f.shape[-2] * f.shape[-1] for f in detect_feats]  # anchors per Detect level
        with torch.autocast(student["scores"].device.type, enabled=False):  # KD on soft targets needs fp32 under AMP
            conf = teacher["scores"].float().sigmoid().amax(1)  # (B, A): teacher's max class probability
            context = {
                "anchor_weight": conf if self.conf_weight else None,
                "teacher_conf": conf,
                "level_weight": [w.unsqueeze(1) for w in conf.split(sizes, dim=1)],
                "teacher_head": teacher.get("head"),  # for terms that run the teacher's head (crosskd)
                "teacher_preds": teacher,
            }
            values = []
            for term in terms:
                if (term.stage == "mimic") != kd.mimic:  # a term of the other stage reports 0
                    values.append(student["scores"].new_zeros((), dtype=torch.float32))
                    continue
                s, t = student[term.source], teacher[term.source]
                if term.source == "feats":
                    s = [
                        c(x.float().detach() if kd.settling else x.float())
                        for c, x in zip(self.connectors[term.name], s)
                    ]
                values.append(term(s, t, **context))
            vec = torch.cat([torch.stack(values) if values else conf.new_zeros(0), *([] if extra is None else [extra])])
            vec = vec * kd.scale
        # a non-finite term stays in the loss: the stock trainer's NaN recovery reads the loss at the end of the epoch
        # and reloads last.pt, as for a non-finite detection loss; an exception here would end the run instead
        if not torch.isfinite(vec).all() and kd.epoch != self._warned_epoch:  # one host sync per batch for all terms
            self._warned_epoch = kd.epoch
            labels = [t.name for t in terms] + names[len(terms) :]  # the pseudo-labels' loss by its columns
            bad = [(name, float(v)) for name, v in zip(labels, vec.detach()) if not torch.isfinite(v)]
            LOGGER.warning(
                f"KD term {bad[0][0]!r} is {bad[0][1]} at epoch {kd.epoch + 1}, batch {kd.index} (non-finite terms: "
                f"{bad}); the stock NaN recovery reloads last.pt after the epoch. If it recurs, lower kd_T/kd_weights "
                f"or lr0, or check the teacher's outputs"
            )
        if self.max_ratio > 0 and not kd.mimic and det_per_image is not None:  # no term may swamp the detection loss
            cap = self.max_ratio * det_per_image
            vec = vec * (cap / vec.detach().clamp_min(1e-12)).clamp(max=1.0)
        return vec


class KDDetectionLoss(_KDTerms, v8DetectionLoss):
    """Stock box/cls/dfl loss plus distillation terms.

    total = alpha * (box + cls + dfl) + sum_i scale * min(1, cap_i) * term_i, where ``cap_i`` keeps each term at most
    ``max_ratio`` times the detection loss (computed on detached values, so it rescales without changing direction).

    Args:
        model (nn.Module): Student detection model (de-paralleled), as for ``v8DetectionLoss``.
        terms (Sequence[KDTerm]): Distillation terms; each reports under its ``item`` key.
        alpha (float): Weight of the detection loss.
        conf_weight (bool): Pass the teacher's per-anchor confidence to anchor-level terms as ``anchor_weight``.
        connectors (dict[str, nn.ModuleList], optional): Adapters per feature term name, one per level.
        max_ratio (float): Cap of each term relative to the detection loss; 0 disables the cap.
        lad (bool): Label assignment distillation: assign the student's targets from the teacher's predictions.
        tal_topk (int): Task-aligned assigner top-k, as for ``v8DetectionLoss``.
        unlabeled (UnlabeledPlan, optional): What the unlabelled images of the run learn; None: the run has none (a
            batch that has some anyway trains them on the recipe's terms).

    Examples:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> from ultralytics.cfg import get_cfg
        >>> from ultralytics_kd.distill.losses import ClassBCE
        >>> m = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
        >>> m.args = get_cfg()
        >>> crit = KDDetectionLoss(m, [ClassBCE(tau=2.0)])
    """

    def __init__(
        self,
        model: nn.Module,
        terms: Sequence[KDTerm],
        alpha: float = 1.0,
        conf_weight: bool = False,
        connectors: dict[str, nn.ModuleList] | None = None,
        max_ratio: float = 0.0,
        lad: bool = False,
        tal_topk: int = 10,
        unlabeled: UnlabeledPlan | None = None,
    ):
        """Build the stock loss and keep the terms."""
        v8DetectionLoss.__init__(self, model, tal_topk=tal_topk)
        self._init_kd(terms, alpha, conf_weight, connectors, max_ratio, unlabeled)
        if lad:
            require("lad", "label assignment distillation (kd_lad=True, kd_recipe=lad)")
            self.assigner = TeacherAssigner(self.assigner)

    def loss(self, preds: dict[str, Any], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Detection loss (of the labelled images) plus the distillation terms, in the stock contract."""
        kd: KDBatch | None = batch.get("kd")
        bs = preds["boxes"].shape[0]
        n = bs if kd is None or kd.n_labeled is None else kd.n_labeled
        labelled = _take(preds, slice(0, n), bs) if n != bs else preds  # an unlabelled image never reaches it
        if n == 0:  # no labelled image: the stock loss on the batch keeps its columns, weighted 0
            det, items = super().loss(preds, batch)
            det, items = det * 0.0, {k: v * 0.0 for k, v in items.items()}
        elif not isinstance(self.assigner, TeacherAssigner) or kd is None or kd.teacher is None:
            det, items = super().loss(labelled, batch)
        else:
            t = _take(kd.teacher, slice(0, n), bs)
            boxes = teacher_boxes(t["boxes"], labelled["feats"], self.stride)
            teacher = t["scores"].float().sigmoid().transpose(1, 2), boxes
            det, items = self.get_assigned_targets_and_loss(labelled, batch, teacher=teacher)[1:]
            det = det * n  # the stock contract: loss vector times batch size, as v8DetectionLoss.loss
        return self._add_kd(det, items, preds, batch)


class KDE2ELoss(_KDTerms, E2ELoss):
    """End-to-end students (YOLO26/YOLOv10 heads): the stock one-to-many + one-to-one loss, plus distillation terms on
    the one-to-many branch (the dense branch the teacher's one-to-many outputs line up with; the one-to-one branch is
    trained on detached features and keeps learning from the labels alone).

    Args:
        model (nn.Module): End-to-end student detection model.
        terms (Sequence[KDTerm]): Distillation terms.
        alpha (float): Weight of the detection loss.
        conf_weight (bool): Pass the teacher's per-anchor confidence to anchor-level terms.
        connectors (dict[str, nn.ModuleList], optional): Adapters per feature term name.
        max_ratio (float): Cap of each term relative to the detection loss; 0 disables the cap.
        unlabeled (UnlabeledPlan, optional): As for ``KDDetectionLoss`` (``unlabeled=`` refuses end-to-end students).
    """

    def __init__(
        self,
        model: nn.Module,
        terms: Sequence[KDTerm],
        alpha: float = 1.0,
        conf_weight: bool = False,
        connectors: dict[str, nn.ModuleList] | None = None,
        max_ratio: float = 0.0,
        unlabeled: UnlabeledPlan | None = None,
    ):
        """Build the stock end-to-end loss and keep the terms."""
        E2ELoss.__init__(self, model)
        self._init_kd(terms, alpha, conf_weight, connectors, max_ratio, unlabeled)

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stock end-to-end loss plus the distillation terms on the one-to-many outputs."""
        det, items = super().__call__(preds, batch)
        return self._add_kd(det, items, self.one2many.parse_output(preds)["one2many"], batch)


def install_criterion(model: nn.Module, terms: Sequence[KDTerm], *, lad: bool = False, **kwargs) -> None:
    """Give ``model`` the distillation criterion for its head: ``KDE2ELoss`` for an end-to-end one, else
    ``KDDetectionLoss``.

    Installed after the stock trainer copied the model for its EMA, so neither the EMA nor its checkpoints carry it. A
    resumed end-to-end run keeps the one-to-many/one-to-one schedule its restored stock criterion had reached.

    Args:
        model (nn.Module): The unwrapped student.
        terms (Sequence[KDTerm]): The active terms.
        lad (bool): Assign the student's targets from the teacher (one-to-many heads only).
        **kwargs: ``alpha``, ``conf_weight``, ``connectors``, ``max_ratio``, ``unlabeled`` of the criterion.
    """
    end2end = getattr(model.model[-1], "one2one_cv2", None) is not None
    resumed = getattr(model, "criterion", None)
    model.criterion = KDE2ELoss(model, terms, **kwargs) if end2end else KDDetectionLoss(model, terms, lad=lad, **kwargs)
    if end2end and resumed is not None:
        model.criterion.updates, model.criterion.o2m, model.criterion.o2o = resumed.updates, resumed.o2m, resumed.o2o
