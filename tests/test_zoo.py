"""The packaged student YAMLs resolve by name from any folder, and ship inside the wheel a plain pip install gets."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from ultralytics import YOLO

import ultralytics_kd
from ultralytics_kd import cli

PACKAGE = Path(ultralytics_kd.__file__).resolve().parent


def test_model_yaml_resolves_outside_the_repository(tmp_path):
    assert Path.cwd() == tmp_path and not (tmp_path / "cfg").exists()  # tests run in their own folder
    assert ultralytics_kd.list_models() == [
        "yolov9-tiny-gelan-rep",
        "yolov9-tiny-shufflev2",
        "yolov9-tiny-shufflev2-c2f",
    ]
    path = Path(ultralytics_kd.model_yaml("yolov9-tiny-shufflev2.yaml"))
    assert path.is_relative_to(PACKAGE) and path == Path(ultralytics_kd.model_yaml("yolov9-tiny-shufflev2"))
    assert sum(p.numel() for p in YOLO(path).model.parameters()) > 1e6
    with pytest.raises(FileNotFoundError, match=r"no packaged student YAML named 'yolov9-huge'.*yolov9-tiny-shufflev2"):
        ultralytics_kd.model_yaml("yolov9-huge")


def test_cli_resolves_packaged_names(tmp_path):
    resolved = cli._packaged_model("model=yolov9-tiny-gelan-rep.yaml")
    assert resolved == f"model={ultralytics_kd.model_yaml('yolov9-tiny-gelan-rep')}"
    (tmp_path / "yolov9-tiny-gelan-rep.yaml").write_text("nc: 1\n")  # a file of the user's own wins
    assert cli._packaged_model("model=yolov9-tiny-gelan-rep.yaml") == "model=yolov9-tiny-gelan-rep.yaml"
    assert cli._packaged_model("model=yolov8n.yaml") == "model=yolov8n.yaml"  # stock names are Ultralytics'


@pytest.mark.slow
def test_wheel_ships_the_student_yamls(tmp_path):
    """What a plain ``pip install ultralytics-kd`` installs: the wheel holds every YAML next to the code."""
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(PACKAGE, src / "ultralytics_kd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(PACKAGE.parent / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    out = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("ultralytics_kd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ultralytics_kd.list_models():
        assert f"ultralytics_kd/cfg/models/{name}.yaml" in names
    assert "ultralytics_kd/cfg/kd.yaml" in names
