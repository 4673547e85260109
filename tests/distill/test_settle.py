"""Settling in (``kd_settle``): over the first epochs the terms ramp in and feature terms train only their adapters."""

from types import SimpleNamespace

import pytest

from ultralytics_kd.distill.schedule import batch_scale


def _args(**kw):
    base = dict(kd_settle=0.0, kd_warmup=0.0, kd_decay=1.0, kd_off_last=False, close_mosaic=0)
    return SimpleNamespace(**{**base, **kw})


def test_batch_scale_ramps_the_terms_and_detaches_while_settling():
    a = _args(kd_settle=2.0)
    assert batch_scale(a, 0, 5, 10, 20) == (False, pytest.approx(0.25), True)
    assert batch_scale(a, 1, 9, 10, 20) == (False, pytest.approx(0.95), True)
    assert batch_scale(a, 2, 0, 10, 20) == (False, 1.0, False)
    longer = _args(kd_settle=1.0, kd_warmup=4.0)  # the longer of the two ramps; adapters alone for kd_settle only
    assert batch_scale(longer, 1, 0, 10, 20) == (False, pytest.approx(0.25), False)
    assert batch_scale(_args(kd_settle=0.0), 0, 0, 10, 20) == (False, 1.0, False)
    stage = SimpleNamespace(active=lambda epoch: epoch < 1)  # a mimic stage is never scaled nor detached
    assert batch_scale(a, 0, 0, 10, 20, stage) == (True, 1.0, False)
