"""Recipes, the KD schedule, the kd_* settings checks and the recorders."""

from dataclasses import replace

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from ultralytics_kd.distill import RECIPES, FeatureRecorder, TermSpec, check_kd_args, get_recipe, kd_scale
from ultralytics_kd.distill.settings import KD_CFG_PATH, KD_DEFAULTS


def test_default_recipe_is_ld_normalised_cwd_with_auto_init():
    """The benchmark's pick: LD + PKD-normalised CWD at T=2, weight 1 each, conf-weighted, no teacher-assigned labels,
    and the student started from the teacher's selected weights where the layouts allow; such a student trains with
    the terms of 'init_sl2' instead, and one that took the teacher's head after the mimic stage with none ('init')."""
    recipe = get_recipe("default")
    terms, alpha, conf = recipe.build()
    assert [(t.name, t.weight, t.tau) for t in terms] == [("ld", 1.0, 2.0), ("cwd", 1.0, 2.0)]
    assert (alpha, conf, recipe.lad, terms[1].norm, recipe.init) == (1.0, True, False, True, "auto")
    # what benchmarks/kd_gain.py measured as 'ld+cwd [kd_cwd_norm=True]' for a student that cannot inherit
    assert recipe == replace(get_recipe("ld+cwd"), cwd_norm=True, init="auto", inherited="init_sl2", mimicked="init")
    assert get_recipe("init").terms == ()


def test_init_sl2_is_what_the_benchmark_measured():
    """'init_sl2' is kd_gain's 'sl2@0.25 [kd_init=select]': the ad-hoc sl2 recipe at weight 0.25, selecting weights."""
    recipe = get_recipe("init_sl2")
    assert recipe == replace(get_recipe("sl2"), terms=(TermSpec("sl2", 0.25),), init="select")
    assert recipe.inherited is None and not recipe.lad  # no chain: it keeps its own terms


def test_overrides_apply():
    """kd_T, kd_weights, kd_alpha and kd_conf_weight override the recipe; seed stays convex in alpha."""
    terms, alpha, conf = get_recipe("default").build(weights=[0.5, 3], tau=4, alpha=0.9, conf_weight=False)
    assert [(t.weight, t.tau) for t in terms] == [(0.5, 4.0), (3.0, 4.0)] and (alpha, conf) == (0.9, False)
    terms, alpha, _ = get_recipe("seed").build(alpha=0.5)
    assert [t.weight for t in terms] == pytest.approx([0.3, 0.2])


def test_ad_hoc_recipes_and_options():
    """'+'-joined term names make a recipe; per-term options reach only the terms that take them."""
    terms, *_ = get_recipe("cls_bce+cwd").build(weights=1.5, options={"cwd": {"norm": True}})
    assert [t.name for t in terms] == ["cls_bce", "cwd"] and terms[1].norm is True
    assert all(t.weight == 1.5 for t in terms)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("cls_bc", "unknown term"),
        ("ld+ld", "each term once"),
    ],
)
def test_bad_recipe_names(bad, match):
    with pytest.raises(ValueError, match=match):
        get_recipe(bad)


@pytest.mark.parametrize(
    "args, match",
    [
        ({"kd_T": 0}, "kd_T=0.0 must be > 0"),
        ({"kd_T": -1.5}, "must be > 0"),
        ({"kd_alpha": 1.5}, r"kd_alpha=1.5 must be in \[0, 1\]"),
        ({"kd_alpha": -0.1}, "must be in"),
        ({"kd_recipe": "default+foo"}, "unknown term"),
        ({"kd_weights": [1.0, -2.0]}, "negative weight"),
        ({"kd_weights": [1.0, 2.0, 3.0]}, "3 values but the recipe has 2"),
        ({"kd_max_ratio": -1}, "kd_max_ratio=-1.0 must be >= 0"),
        ({"kd_warmup": -1}, "kd_warmup"),
        ({"kd_T": "hot"}, "must be a number"),
        ({"kd_feat_layers": "15"}, "list of layer indices"),
        ({"kd_off_last": "yes"}, "True or False"),
    ],
)
def test_bad_values_are_rejected_with_the_fix(args, match):
    with pytest.raises(ValueError, match=match):
        check_kd_args(args)


def test_kd_yaml_holds_every_key_with_a_comment():
    """cfg/kd.yaml is the single source of the defaults, one commented line per key."""
    lines = [ln for ln in KD_CFG_PATH.read_text().splitlines() if ln and not ln.startswith("#")]
    assert {ln.split(":")[0] for ln in lines} == set(KD_DEFAULTS)
    assert all("#" in ln for ln in lines)
    assert all(k in {"teacher", "unlabeled"} or k.startswith("kd_") for k in KD_DEFAULTS)  # the plugin's own keys
    check_kd_args(KD_DEFAULTS)
    assert set(RECIPES) >= {"default", "seed"}


def test_schedule():
    """Warm-up ramps, decay interpolates after warm-up, off_from switches off."""
    assert kd_scale(0.0, 10) == 1.0
    assert kd_scale(0.5, 10, warmup=2) == 0.25
    assert kd_scale(2.0, 10, warmup=2) == 1.0
    assert kd_scale(6.0, 10, warmup=2, decay=0.0) == pytest.approx(0.5)
    assert kd_scale(10.0, 10, decay=0.2) == pytest.approx(0.2)
    assert kd_scale(7.9, 10, off_from=8) == 1.0 and kd_scale(8.0, 10, off_from=8) == 0.0


def test_recorder_hooks_live_only_inside_the_block():
    """Hooks are registered on entry and removed on exit, so copies and checkpoints never carry them."""
    m = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    with FeatureRecorder(m, [15, 18, 21]) as rec:
        assert all(m.model[i]._forward_hooks for i in (15, 18, 21))
        with torch.no_grad():
            out = m(torch.zeros(1, 3, 64, 64))[1]
    assert not any(m.model[i]._forward_hooks for i in (15, 18, 21))
    assert all(torch.equal(a, b) for a, b in zip(rec.features, out["feats"]))
    with pytest.raises(ValueError, match="out of range"):
        FeatureRecorder(m, [99])


def test_frozen_teacher_is_fused_with_same_outputs():
    import copy

    import torch

    from ultralytics_kd.distill.teacher import FrozenTeacher

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    for m in model.modules():  # non-trivial BN statistics, or folding them would change nothing
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[1]
    teacher = FrozenTeacher(copy.deepcopy(model))
    assert teacher.model.is_fused() and not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    out = teacher(x)
    for k in ("boxes", "scores"):
        assert ((out[k] - ref[k]).abs().max() / ref[k].abs().max()) < 1e-4


def test_lad_in_recipe_names():
    """'lad' is a recipe of its own (no loss term) and a switch inside '+'-joined names."""
    assert get_recipe("lad").lad and get_recipe("lad").terms == ()
    r = get_recipe("lad+ld")
    assert r.lad and [t.name for t in r.terms] == ["ld"]
    assert not get_recipe("seed").lad and not get_recipe("cls_bce+ld").lad


def test_init_recipe_and_who_inherits():
    """'init' only selects weights; the default selects where it can; other recipes start at random."""
    assert get_recipe("init").terms == () and get_recipe("init").init == "select" and not get_recipe("init").lad
    assert [get_recipe(n).init for n in ("default", "seed", "lad", "ld+cwd")] == ["auto", "none", "none", "none"]


def test_cwd_norm_follows_the_recipe_unless_overridden():
    """kd_cwd_norm unset: the recipe's choice; set: it wins."""
    plain = get_recipe("cwd")
    assert plain.build()[0][0].norm is False
    assert replace(plain, cwd_norm=True).build()[0][0].norm is True
    assert replace(plain, cwd_norm=True).build(options={"cwd": {"norm": False}})[0][0].norm is False
