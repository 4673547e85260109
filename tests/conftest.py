"""Run every test in its own temporary folder, so that Ultralytics' default outputs (runs/detect/val*, exports of
YAML-built models) never land in the checkout."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
