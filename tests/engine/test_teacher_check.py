"""The teacher check validates the teacher without changing it, firing no integration callbacks; AMP sets its dtype."""

from __future__ import annotations

import pytest
import torch
from ultralytics.utils import callbacks

from ultralytics_kd import KDTrainer
from ultralytics_kd.distill.teacher import validate_teacher


def _setup(teacher, data_yaml, tiny, tmp_path, **kw) -> KDTrainer:
    """A KDTrainer set up as at the first batch (model, loaders, criterion, teacher check), without training."""
    trainer = KDTrainer(
        overrides=dict(
            model="yolov8n.yaml", teacher=str(teacher), data=str(data_yaml), epochs=1, kd_recipe="cls_bce+cwd",
            project=str(tmp_path), name="t", **{**tiny, **kw},
        )
    )  # fmt: skip
    trainer._setup_train()
    return trainer


@pytest.mark.parametrize("kind", ["nms", "end2end"])
def test_teacher_check_leaves_teacher_untouched(kind, data_yaml, teacher_pt, tiny, tmp_path, untrained, monkeypatch):
    """With nms=False the stock AutoBackend would switch an end-to-end teacher to its one-to-one branch and fuse it."""
    teacher = teacher_pt if kind == "nms" else untrained("yolo26n.yaml", tmp_path / "y26.pt")
    fired = []
    stock = callbacks.add_integration_callbacks

    def spy(instance):  # an integration (W&B, MLflow, ...) that would log whatever it validates
        stock(instance)
        instance.callbacks["on_val_start"].append(lambda v: fired.append(type(v).__name__))

    monkeypatch.setattr(callbacks, "add_integration_callbacks", spy)
    trainer = _setup(teacher, data_yaml, tiny, tmp_path, nms=False, kd_teacher_check=False)  # checked below
    model = trainer.teacher.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = model.model[-1]
    e2e = getattr(head, "end2end", None)
    metrics = validate_teacher(model, trainer.test_loader, trainer.args, trainer.save_dir)
    assert "metrics/mAP50-95(B)" in metrics and fired == []
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert getattr(head, "end2end", None) == e2e and model.model[-1] is head
    out = trainer.teacher(torch.zeros(1, 3, 64, 64))
    assert out["scores"].shape[1] == head.nc  # the one-to-many branch every batch distils
    if kind == "end2end":
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # not fused


def test_teacher_takes_amp_dtype_bf16(data_yaml, teacher_pt, tiny, tmp_path):
    """Under amp=bf16 the teacher runs in bf16 (not fp16, which bf16 autocast would mix with); fp32 without AMP."""
    assert next(_setup(teacher_pt, data_yaml, tiny, tmp_path, kd_teacher_check=False).teacher.parameters()).dtype == (
        torch.float32
    )
    trainer = _setup(teacher_pt, data_yaml, tiny, tmp_path, amp="bf16", kd_teacher_check=False, exist_ok=True)
    assert trainer.amp and next(trainer.teacher.parameters()).dtype == torch.bfloat16
    out = trainer.teacher(torch.rand(2, 3, 64, 64))
    assert out["scores"].dtype == torch.bfloat16 and torch.isfinite(out["scores"].float()).all()
