"""Recipes: which distillation terms to combine, with which weights, temperature and detection-loss weight.

A recipe is data (a list of term names and weights); ``Recipe.build`` turns it into term modules, applying the user's
``kd_*`` overrides. Any '+'-joined list of registered term names is also a recipe, e.g. ``kd_recipe=cls_bce+cwd``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ultralytics_kd.distill.losses import TERMS, KDTerm

__all__ = ["RECIPES", "Recipe", "TermSpec", "get_recipe"]


@dataclass(frozen=True)
class TermSpec:
    """One term of a recipe: its registry name and loss weight."""

    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Recipe:
    """A list of terms plus how they mix with the detection loss.

    Attributes:
        terms (tuple[TermSpec, ...]): Terms in order; each becomes one loss column.
        alpha (float): Weight of the stock box/cls/dfl loss.
        tau (float): Temperature given to every term.
        conf_weight (bool): Weight anchors by the teacher's confidence in anchor-level terms.
        convex (bool): Multiply the term weights by (1 - alpha), i.e. total = alpha * det + (1 - alpha) * sum(w * term),
            the seeds' formula; otherwise total = alpha * det + sum(w * term).
        lad (bool): Label assignment distillation: the student's targets are assigned from the teacher's predictions
            (``kd_lad`` overrides it).
        cwd_norm (bool): Normalise channels before CWD, as in PKD (``kd_cwd_norm`` overrides it).
        init (str): How a student built without weights starts: ``"select"`` from a uniform selection of the teacher's
            weights, ``"mimic"`` by imitating the teacher's features and then taking its head, ``"auto"`` the first
            where the layouts allow and else the second, ``"none"`` at random (``kd_init`` overrides it).
        inherited (str | None): Name of the recipe whose terms replace these when the student did start from the
            teacher's weights; None keeps these terms either way.
        mimicked (str | None): The same, for a student that took the teacher's head after the mimic stage.
    """

    terms: tuple[TermSpec, ...]
    alpha: float = 1.0
    tau: float = 2.0
    conf_weight: bool = True
    convex: bool = False
    lad: bool = False
    cwd_norm: bool = False
    init: str = "none"
    inherited: str | None = None
    mimicked: str | None = None

    def build(
        self,
        weights: float | Sequence[float] | None = None,
        tau: float | None = None,
        alpha: float | None = None,
        conf_weight: bool | None = None,
        options: dict[str, dict] | None = None,
    ) -> tuple[list[KDTerm], float, bool]:
        """Instantiate the terms with overrides.

        Args:
            weights (float | Sequence[float], optional): One weight for all terms, or one per term.
            tau (float, optional): Temperature override.
            alpha (float, optional): Detection-loss weight override.
            conf_weight (bool, optional): Anchor confidence weighting override.
            options (dict[str, dict], optional): Extra constructor arguments per term name, e.g. ``{"cwd": {"norm":
                True}}``; ignored for terms not in the recipe.

        Returns:
            (tuple[list[KDTerm], float, bool]): Term modules, detection weight alpha, confidence weighting flag.
        """
        alpha = self.alpha if alpha is None else float(alpha)
        tau = self.tau if tau is None else float(tau)
        options = {"cwd": {"norm": self.cwd_norm}, **(options or {})}
        ws = _expand_weights(weights, len(self.terms)) or [s.weight for s in self.terms]
        share = (1.0 - alpha) if self.convex else 1.0
        terms = []
        for spec, w in zip(self.terms, ws):
            cls = TERMS[spec.name]
            extra = options.get(spec.name, {})
            accepted = inspect.signature(cls.__init__).parameters
            terms.append(cls(weight=share * w, tau=tau, **{k: v for k, v in extra.items() if k in accepted}))
        return terms, alpha, self.conf_weight if conf_weight is None else bool(conf_weight)


def _expand_weights(weights, n: int) -> list[float] | None:
    """Turn a weight override into one float per term, or None for the recipe's own weights."""
    if weights is None:
        return None
    ws = [float(weights)] * n if isinstance(weights, (int, float)) else [float(w) for w in weights]
    if len(ws) != n:
        raise ValueError(f"kd_weights has {len(ws)} values but the recipe has {n} terms; give one per term or one")
    if any(w < 0 for w in ws):
        raise ValueError(f"kd_weights={list(ws)} has a negative weight; weights must be >= 0")
    return ws


RECIPES: dict[str, Recipe] = {
    # The seeds' formula: total = 0.65 * yolo + 0.35 * (0.6 * softmax-KL + 0.4 * feature MSE), T = 4.
    "seed": Recipe(
        (TermSpec("cls_kl", 0.6), TermSpec("feat_mse", 0.4)), alpha=0.65, tau=4.0, conf_weight=False, convex=True
    ),
    # What each kind of student gets, and why (figures and commands: docs/BENCHMARKS.md). A student of the teacher's
    # layout starts from the teacher's selected weights (init=auto) and trains with the term of 'init_sl2'. A student
    # whose neck and head have the teacher's layout under another backbone runs the graft stage and takes a selection of
    # the teacher's neck and head; one of another family whose head has the teacher's head layout runs the mimic stage
    # and takes the teacher's head. Both then train on the stock loss ('init': no terms). Any other student keeps its
    # start and trains with LD + PKD-normalised CWD. LAD is left out: it hurt the student that differs from its teacher
    # and cannot serve end-to-end students.
    "default": Recipe(
        (TermSpec("ld", 1.0), TermSpec("cwd", 1.0)),
        alpha=1.0,
        tau=2.0,
        conf_weight=True,
        cwd_norm=True,
        init="auto",
        inherited="init_sl2",
        mimicked="init",
    ),
    # What the default trains with once the student inherited: weight selection + the score-weighted feature L2 of
    # native distillation at 0.25, under our adapters and guard.
    "init_sl2": Recipe((TermSpec("sl2", 0.25),), init="select"),
    # Label assignment distillation alone: no loss term, the teacher's predictions pick the student's positives.
    "lad": Recipe((), lad=True),
    # Weight selection alone: the teacher only initialises the student, which then trains on the stock loss.
    "init": Recipe((), init="select"),
}


_AD_HOC = Recipe((), alpha=1.0, tau=2.0, conf_weight=True)  # what '+'-joined term names get besides weight 1 each


def get_recipe(name: str) -> Recipe:
    """Look up a named recipe, or build an ad-hoc one from '+'-joined term names (weight 1 each, T 2).

    ``lad`` among the names switches label assignment distillation on, e.g. ``"lad+ld"``.

    Args:
        name (str): ``"default"``, ``"seed"``, ``"lad"``, or e.g. ``"cls_bce+ld"``.

    Returns:
        (Recipe): The recipe.

    Raises:
        ValueError: If a name is neither a recipe nor a registered term, or a term is repeated.
    """
    name = str(name).strip()
    if name in RECIPES:
        return RECIPES[name]
    parts = [p.strip() for p in name.replace(",", "+").split("+") if p.strip()]
    lad = "lad" in parts
    parts = [p for p in parts if p != "lad"]
    if unknown := [p for p in parts if p not in TERMS]:
        raise ValueError(
            f"kd_recipe='{name}': unknown term {unknown}. Use a recipe {sorted(RECIPES)} or '+'-joined terms from "
            f"{sorted(TERMS)} (plus 'lad'), e.g. kd_recipe=cls_bce+ld"
        )
    if not parts or len(set(parts)) != len(parts):
        raise ValueError(f"kd_recipe='{name}' must name each term once, e.g. kd_recipe=cls_bce+ld")
    return replace(_AD_HOC, terms=tuple(TermSpec(p) for p in parts), lad=lad)
