"""What an unlabelled image learns (``kd_unlabeled_terms``), decided once per run.

The stock detection loss never sees an unlabelled image (``distill/unlabeled.py``); what it learns from the teacher is
a choice:

- ``dense``: soft targets at every anchor, with no threshold, as in Dense Teacher (Zhou et al., "Dense Teacher: Dense
  Pseudo-Labels for Semi-supervised Object Detection", ECCV 2022, https://arxiv.org/abs/2207.02541): the teacher's
  tempered class sigmoids (``cls_bce``) and DFL bins (``ld``), plus the run's own feature terms. A recipe term of the
  same name is reused (its weight and temperature), never doubled.
- ``pseudo``: the teacher's confident boxes as labels of the stock assigner and loss, as the "reliable" pseudo-labels
  of Efficient Teacher (Xu et al., "Efficient Teacher: Semi-Supervised Object Detection for YOLOv5", 2023,
  https://arxiv.org/abs/2302.07577); ``distill/pseudo.py``.
- ``dense+pseudo``: both.
- ``recipe``: the run's recipe terms, as on the labelled images.

Whatever the choice, a mimic stage's imitation term trains on every image: it is the whole loss of the stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ultralytics_kd.distill.losses import TERMS, KDTerm

__all__ = ["DEFAULT_UNLABELED_TERMS", "PSEUDO_FROM", "UNLABELED_TERMS", "UnlabeledPlan", "plan_unlabeled"]

UNLABELED_TERMS = ("dense", "pseudo", "dense+pseudo", "recipe")
# Issue #27's benchmark (benchmarks/unlabeled.py; BCCD's 25 % split, yolov9t, the teacher trained at one step per
# batch, seeds 0-2): test mAP50-95 0.529 against 0.526 for dense, -0.3 [-1.4, +0.8] paired (docs/BENCHMARKS.md).
DEFAULT_UNLABELED_TERMS = "pseudo"
PSEUDO_FROM = ("teacher", "best")  # which model's boxes are the pseudo-labels (``kd_pseudo_from``, distill/labeller.py)
DENSE_TERMS = ("cls_bce", "ld")  # Dense Teacher's targets that need no threshold: class scores and box bins
_FEATURES = ("feats", "entries")  # the sources of feature terms, kept by "dense"


@dataclass
class UnlabeledPlan:
    """The terms and pseudo-labels of the unlabelled images of a run.

    Attributes:
        mode (str): One of ``UNLABELED_TERMS``.
        terms (list[KDTerm]): Terms evaluated on the unlabelled images (recipe terms are the same modules).
        pseudo_conf (float | str | None): Confidence above which a teacher box is a pseudo-label; ``"auto"`` until
            the teacher's validation sets it (``labeller.setup_pseudo_labels``); None: no pseudo-labels.
        chosen (bool): ``kd_unlabeled_terms`` was set; False: the default applies.
        left_out (tuple[str, ...]): Dense terms the pair rules out (``ld`` without shared DFL bins).
        pseudo_low (float): Confidence from which a teacher box below ``pseudo_conf`` is uncertain: no background loss
            inside it (``kd_pseudo_low``, ``pseudo.uncertain_anchors``); 0: off.
    """

    mode: str
    terms: list[KDTerm]
    pseudo_conf: float | str | None
    chosen: bool
    left_out: tuple[str, ...] = ()
    pseudo_low: float = 0.0

    def active(self, mimic: bool) -> bool:
        """Whether the unlabelled images learn anything in a batch of the mimic stage (``mimic``) or after it; the
        pseudo-labels train the stock loss, which the stage leaves out."""
        return any((t.stage == "mimic") == mimic for t in self.terms) or (self.pseudo_conf is not None and not mimic)

    def describe(self) -> str:
        """One line for the training log: what the images learn from, and whether the choice is the default."""
        how = "set" if self.chosen else "the default: 0.3 above dense at three seeds, level within the noise"
        what = [t.name for t in self.terms]
        if self.pseudo_conf is not None:
            c = self.pseudo_conf
            c = "auto (the teacher's max-F1 confidence on val)" if c == "auto" else f"{c:g}"
            what.append(f"the stock loss on the teacher's boxes above conf {c} (up*_loss)")
            if self.pseudo_low:
                what[-1] += f", no background loss inside its boxes from conf {self.pseudo_low:g}"
        off = f"; {', '.join(self.left_out)} off: teacher and student DFL bins differ" if self.left_out else ""
        return f"{' + '.join(what) or 'nothing'} (kd_unlabeled_terms={self.mode}: {how}{off})"


def plan_unlabeled(
    mode: str | None,
    pseudo_conf: float | str,
    terms: Sequence[KDTerm],
    tau: float,
    ld_ok: bool = True,
    pseudo_low: float | None = 0.0,
) -> UnlabeledPlan:
    """What the unlabelled images of a run learn.

    Args:
        mode (str | None): ``kd_unlabeled_terms``; None for ``DEFAULT_UNLABELED_TERMS``.
        pseudo_conf (float | str): ``kd_pseudo_conf``, or ``"auto"``.
        terms (Sequence[KDTerm]): The run's terms (a mimic stage's imitation term included).
        tau (float): Temperature of a dense term the recipe lacks (the recipe's, or ``kd_T``); its weight is 1.
        ld_ok (bool): Teacher and student share DFL bins (``reg_max`` > 1), which ``ld`` compares.
        pseudo_low (float | None): ``kd_pseudo_low``.

    Returns:
        (UnlabeledPlan): The plan.

    Examples:
        >>> from ultralytics_kd.distill.losses import ScoreWeightedL2
        >>> [t.name for t in plan_unlabeled("dense", 0.5, [ScoreWeightedL2(0.25)], tau=2.0).terms]
        ['sl2', 'cls_bce', 'ld']
    """
    chosen, mode = mode is not None, mode or DEFAULT_UNLABELED_TERMS
    if mode not in UNLABELED_TERMS:
        raise ValueError(f"kd_unlabeled_terms={mode!r} must be one of {list(UNLABELED_TERMS)}")
    if mode == "recipe":
        return UnlabeledPlan(mode, list(terms), None, chosen)
    dense = "dense" in mode.split("+")
    left_out = ("ld",) if dense and not ld_ok else ()
    wanted = {n for n in DENSE_TERMS if n not in left_out} if dense else set()
    kept = [t for t in terms if t.stage == "mimic" or dense and (t.source in _FEATURES or t.name in wanted)]
    kept += [TERMS[n](weight=1.0, tau=tau) for n in DENSE_TERMS if n in wanted and n not in {t.name for t in terms}]
    conf = pseudo_conf if pseudo_conf == "auto" else float(pseudo_conf)
    pseudo = "pseudo" in mode
    return UnlabeledPlan(
        mode, kept, conf if pseudo else None, chosen, left_out, float(pseudo_low or 0) if pseudo else 0
    )
