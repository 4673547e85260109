"""Each distillation term's value on hand-made tensors."""

import math

import pytest
import torch

from ultralytics_kd.distill.losses import (
    TERMS,
    BoxImitation,
    ChannelWiseDistill,
    ClassBCE,
    ClassKL,
    CrossHeadKD,
    FeatureMSE,
    LocalizationDistill,
    MaskedGenerativeDistill,
    ScoreWeightedL2,
    anchor_mean,
)
from ultralytics_kd.distill.losses.mgd import MaskedGenerator


def _inputs(term, seed=0):
    """Random student/teacher inputs of the shape the term reads, plus context."""
    g = torch.Generator().manual_seed(seed)
    if term.source == "scores":
        return torch.randn(2, 3, 10, generator=g), torch.randn(2, 3, 10, generator=g), {}
    if term.source == "boxes":
        return torch.randn(2, 64, 10, generator=g), torch.randn(2, 64, 10, generator=g), {}
    s = [torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    t = [torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    ctx = {"level_weight": [torch.rand(2, 1, 9, generator=g), torch.rand(2, 1, 4, generator=g)]}
    if term.name == "crosskd":  # it runs the teacher's head: a tiny frozen one, and its predictions on t
        head = _frozen_head()
        ctx.update(teacher_head=head, teacher_preds=head.forward_head(t, **head.one2many))
    return s, t, ctx


def _frozen_head(nc: int = 3, ch: tuple = (4, 4)):
    """A frozen Detect head of random weights (so predictions differ with the input), as a teacher's would be."""
    from ultralytics.nn.modules import Detect

    torch.manual_seed(0)
    head = Detect(nc=nc, ch=ch)
    head.stride = torch.tensor([8.0, 16.0])
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return head.eval().requires_grad_(False)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_identical_inputs_give_zero(name):
    """A student that matches its teacher exactly has nothing left to learn: every term reads 0."""
    term = TERMS[name](weight=1.0, tau=2.0)
    _, t, ctx = _inputs(term)
    assert float(term(t, t, **ctx)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_gradient_reaches_student_only(name):
    """The term is differentiable in the student's input and positive when inputs differ."""
    term = TERMS[name](weight=1.0, tau=2.0)
    s, t, ctx = _inputs(term)
    s = [x.requires_grad_() for x in s] if isinstance(s, list) else s.requires_grad_()
    loss = term(s, t, **ctx)
    loss.backward()
    assert loss.item() > 0 and math.isfinite(loss.item())
    grads = [x.grad for x in s] if isinstance(s, list) else [s.grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_weight_scales_linearly(name):
    """``weight`` multiplies the value."""
    s, t, ctx = _inputs(TERMS[name]())
    one, three = TERMS[name](weight=1.0, tau=2.0)(s, t, **ctx), TERMS[name](weight=3.0, tau=2.0)(s, t, **ctx)
    assert float(three) == pytest.approx(3 * float(one), rel=1e-5)


def test_cls_kl_known_value():
    """Teacher softmax (0.75, 0.25) vs uniform student at T=1: KL = 0.75 ln 1.5 + 0.25 ln 0.5."""
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1)
    s = torch.zeros(1, 2, 1)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(ClassKL(tau=1.0)(s, t)) == pytest.approx(expected, rel=1e-6)
    # T=2 with logits doubled gives the same distributions, so the value is the T=1 value times T^2 = 4
    assert float(ClassKL(tau=2.0)(2 * s, 2 * t)) == pytest.approx(4 * expected, rel=1e-6)


def test_cls_bce_known_value():
    """Teacher sigmoid 0.5, student sigmoid 0.75: binary KL = 0.5 ln(2/3) + 0.5 ln 2, per class, times T^2."""
    s = torch.full((1, 1, 1), math.log(3.0))
    t = torch.zeros(1, 1, 1)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(ClassBCE(tau=1.0)(s, t)) == pytest.approx(expected, rel=1e-6)
    assert float(ClassBCE(tau=2.0)(2 * s, 2 * t)) == pytest.approx(4 * expected, rel=1e-6)
    # summed over classes: two identical classes give twice the value
    assert float(ClassBCE(tau=1.0)(s.repeat(1, 2, 1), t.repeat(1, 2, 1))) == pytest.approx(2 * expected, rel=1e-6)


def test_cls_bce_gradient_equals_plain_bce():
    """Subtracting the teacher's entropy changes the value, not the gradient, of the BCE against soft targets."""
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 5)
    ClassBCE(tau=1.0)(s, t).backward()
    s2 = s.detach().clone().requires_grad_()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s2, t.sigmoid(), reduction="none").sum(1).mean()
    bce.backward()
    assert torch.allclose(s.grad, s2.grad, atol=1e-7)


def test_ld_known_value():
    """reg_max=2: uniform teacher bins vs student bins (0.75, 0.25) on every side."""
    s = torch.tensor([math.log(3.0), 0.0] * 4).view(1, 8, 1)
    t = torch.zeros(1, 8, 1)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(LocalizationDistill(tau=1.0)(s, t)) == pytest.approx(expected, rel=1e-6)


def test_ld_reads_sides_from_the_detect_layout():
    """Channels are side-major (side * reg_max + bin), as Detect emits and v8DetectionLoss reads them."""
    t = torch.zeros(1, 8, 1)
    s = t.clone()
    s[0, 2:4, 0] = torch.tensor([math.log(3.0), 0.0])  # only side 1 differs
    kl_side = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(LocalizationDistill(tau=1.0)(s, t)) == pytest.approx(kl_side / 4, rel=1e-6)


def test_box_known_value():
    """Concentric squares of side 2 and 4 (plain distances, reg_max=1): IoU 1/4, no centre or aspect penalty."""
    s, t = torch.ones(1, 4, 1), torch.full((1, 4, 1), 2.0)
    assert float(BoxImitation()(s, t)) == pytest.approx(0.75, rel=1e-5)


def test_box_decodes_each_side_with_its_own_bins():
    """A 16-bin student whose expected distances equal a 1-bin teacher's plain distances reads 0."""
    t = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1)
    s = torch.full((1, 64, 1), -1e4)
    for side, d in enumerate([1, 2, 3, 4]):
        s[0, side * 16 + d, 0] = 0.0  # all mass on bin d
    assert float(BoxImitation()(s, t)) == pytest.approx(0.0, abs=1e-5)


def test_box_weights_anchors_by_teacher_confidence():
    """An anchor the teacher gives confidence 0 does not count; anchor_weight is only the fallback."""
    s = torch.ones(1, 4, 2)
    t = torch.stack([torch.ones(4), torch.full((4,), 2.0)], -1).unsqueeze(0)  # anchor 0 matches, anchor 1 does not
    term = BoxImitation()
    assert float(term(s, t, teacher_conf=torch.tensor([[1.0, 0.0]]))) == pytest.approx(0.0, abs=1e-6)
    assert float(term(s, t, anchor_weight=torch.tensor([[0.0, 1.0]]))) == pytest.approx(0.75, rel=1e-5)
    both = term(s, t, teacher_conf=torch.tensor([[1.0, 0.0]]), anchor_weight=torch.tensor([[0.0, 1.0]]))
    assert float(both) == pytest.approx(0.0, abs=1e-6)


def test_feat_mse_and_sl2_known_values():
    """MSE of zeros vs ones is 1; sl2 only counts locations the teacher is confident about."""
    s, t = torch.zeros(1, 2, 1, 2), torch.ones(1, 2, 1, 2)
    t[..., 1] = 3.0  # error 1 at location 0, 9 at location 1
    assert float(FeatureMSE()([s], [t])) == pytest.approx(5.0)
    w = torch.tensor([[[1.0, 0.0]]])
    assert float(ScoreWeightedL2()([s], [t], level_weight=[w])) == pytest.approx(1.0)
    w = torch.tensor([[[0.0, 1.0]]])
    assert float(ScoreWeightedL2()([s], [t], level_weight=[w])) == pytest.approx(9.0)


def test_mgd_known_value_and_scale_free():
    """Maps normalised per channel before the MSE: an anti-correlated channel reads 2 whatever the scales."""
    s = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    t = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    assert float(MaskedGenerativeDistill()([s], [t])) == pytest.approx(2.0, rel=1e-5)
    assert float(MaskedGenerativeDistill(weight=0.5)([3 * s + 1], [100 * t])) == pytest.approx(1.0, rel=1e-5)


def test_mgd_generator_masks_locations_in_training_only():
    """In training a random ``ratio`` of locations (all channels at once) is zeroed before the generator; in eval none
    is; the term's connector is this generator."""
    gen = MaskedGenerativeDistill.connector(4, 6)
    assert isinstance(gen, MaskedGenerator) and gen.ratio == 0.65
    gen.generate = torch.nn.Identity()  # look at what the generator is given
    x = torch.randn(8, 4, 16, 16)
    out = gen.train()(x)
    zero, kept = (out == 0).all(1), (out == x).all(1)  # (B, H, W)
    assert (zero | kept).all()
    assert 0.6 < float(zero.float().mean()) < 0.7
    assert torch.equal(gen.eval()(x), x)
    with pytest.raises(ValueError, match="mask ratio"):
        MaskedGenerator(4, 6, ratio=1.0)


def test_crosskd_is_class_and_box_kd_on_the_teacher_head():
    """The student's features through the teacher's head: binary class KL on every anchor, LD weighted by confidence;
    the gradient reaches the student's features and never the teacher's head."""
    term = CrossHeadKD(weight=2.0, tau=2.0)
    s, t, ctx = _inputs(term, seed=1)
    s = [x.requires_grad_() for x in s]
    head, own = ctx["teacher_head"], ctx["teacher_preds"]
    w = torch.rand(2, 13)
    cross = head.forward_head(s, **head.one2many)
    expected = 2.0 * (
        ClassBCE(1.0, 2.0)(cross["scores"], own["scores"])
        + LocalizationDistill(1.0, 2.0)(cross["boxes"], own["boxes"], anchor_weight=w)
    )
    loss = term(s, t, anchor_weight=w, **ctx)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6) and float(loss) > 0
    loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(p.grad is None for p in head.parameters())
    with pytest.raises(ValueError, match="crosskd needs the teacher's Detect head"):
        term(s, t)


def test_cwd_known_value():
    """One channel over 2 locations: teacher spatial softmax (0.75, 0.25), student uniform."""
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)
    s = torch.zeros(1, 1, 1, 2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(ChannelWiseDistill(tau=1.0)([s], [t])) == pytest.approx(expected, rel=1e-6)


def test_cwd_norm_ignores_scale_and_shift():
    """With PKD normalisation a student that is an affine copy of the teacher (per channel) has nothing to learn."""
    t = torch.randn(2, 3, 4, 4)
    s = 5.0 * t + 2.0
    assert float(ChannelWiseDistill(tau=1.0, norm=True)([s], [t])) == pytest.approx(0.0, abs=1e-5)
    assert float(ChannelWiseDistill(tau=1.0, norm=False)([s], [t])) > 0.1


def test_anchor_mean_weights():
    """Confidence weighting averages only where the weight is."""
    loss = torch.tensor([[1.0, 3.0]])
    assert float(anchor_mean(loss)) == 2.0
    assert float(anchor_mean(loss, torch.tensor([[1.0, 0.0]]))) == 1.0
    assert float(anchor_mean(loss, torch.tensor([[1.0, 1.0]]))) == 2.0


def test_registry_rejects_a_clash():
    """Recipes name terms, so two terms may not share a name."""
    from ultralytics_kd.distill.losses import KDTerm, register_term

    class Fake(KDTerm):
        name, item = "cls_bce", "kdfk_loss"

    with pytest.raises(ValueError, match="already registered"):
        register_term(Fake)


def test_registry_rejects_columns_results_png_would_not_plot():
    """Columns reach results.png only if named '*loss*', and stay readable in the progress bar at <= 10 chars."""
    from ultralytics_kd.distill.losses import KDTerm, register_term

    class Fake(KDTerm):
        name, item = "fake", "kd_fake"

    with pytest.raises(ValueError, match="must contain 'loss'"):
        register_term(Fake)
    assert all("loss" in t.item and len(t.item) <= 10 for t in TERMS.values())


def test_entry_mimic_known_value_and_gradient():
    """Student channel k of a level targets teacher channel uniform_index(k), error divided by that channel's std over
    the batch (floored at a tenth of the level's mean std); the mean over elements, then over levels."""
    from ultralytics_kd.distill.losses.mimic import EntryMimic

    t = torch.zeros(2, 4, 1, 1)
    t[:, 0, 0, 0] = torch.tensor([1.0, 3.0])  # std sqrt(2); selected as student channel 0
    t[:, 1] = 9.0  # not selected (4 -> 2 takes channels 0 and 2)
    t[:, 2, 0, 0] = torch.tensor([0.0, 0.02])  # std 0.0141, floored to 0.1 * mean(sqrt(2), 0.0141) = 0.0714
    s = torch.zeros(2, 2, 1, 1, requires_grad=True)
    teacher = t.clone().requires_grad_(True)
    loss = EntryMimic(weight=2.0)([s], [teacher])
    floor = 0.1 * (math.sqrt(2) + math.sqrt(2) * 0.01) / 2
    expected = 2.0 * ((1 + 9) / 2 + 0.02**2 / floor**2) / 4  # (channel 0 sum + channel 1 sum) / 4 elements
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert s.grad.abs().sum() > 0 and teacher.grad is None
    assert float(EntryMimic()([t[:, ::2]], [t])) == 0.0
