"""Settling in: a student with weights of its own ramps the terms in and trains only the adapters of feature terms
over its first epochs (``schedule.settle_epochs``, ``kd_settle``)."""

from types import SimpleNamespace

import pytest

from ultralytics_kd.distill.schedule import batch_scale, settle_epochs


def _args(**kw):
    base = dict(kd_settle=None, warmup_epochs=3.0, kd_warmup=0.0, kd_decay=1.0, kd_off_last=False, close_mosaic=0)
    return SimpleNamespace(**{**base, **kw})


def test_settling_defaults_to_the_warm_up_for_a_student_with_weights_of_its_own_only():
    assert settle_epochs(_args(), kept=True) == 3.0
    assert settle_epochs(_args(warmup_epochs=1), kept=True) == 1.0
    assert settle_epochs(_args(), kept=False) == 0.0
    assert settle_epochs(_args(kd_settle=1.5), kept=False) == 1.5  # set explicitly: for any student
    assert settle_epochs(_args(kd_settle=0), kept=True) == 0.0  # switched off


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
