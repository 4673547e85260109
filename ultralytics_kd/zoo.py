"""The student YAMLs shipped inside the package, by name, for installs that have no repository ``cfg/`` folder.

Examples:
    >>> import ultralytics_kd
    >>> from ultralytics import YOLO
    >>> model = YOLO(ultralytics_kd.model_yaml("yolov9-tiny-shufflev2"))
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS_DIR", "list_models", "model_yaml"]

MODELS_DIR = Path(__file__).resolve().parent / "cfg" / "models"


def list_models() -> list[str]:
    """Names of the packaged student YAMLs, e.g. ``["yolov9-tiny-gelan-rep", "yolov9-tiny-shufflev2"]``."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def model_yaml(name: str) -> str:
    """Path of a packaged student YAML, for ``YOLO(...)`` or ``model=`` on the command line.

    Args:
        name (str): The YAML's name, with or without ``.yaml``, e.g. ``"yolov9-tiny-shufflev2"``.

    Returns:
        (str): Absolute path of the YAML inside the installed package.

    Raises:
        FileNotFoundError: No packaged YAML has that name; the message lists those that exist.
    """
    path = MODELS_DIR / f"{Path(name).stem}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no packaged student YAML named '{name}'; ultralytics_kd ships {list_models()}. Pass one of these names, "
            f"or the path of your own YAML to YOLO(...)"
        )
    return str(path)
