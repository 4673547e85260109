"""Load, check and freeze the teacher.

The teacher is any trained Ultralytics detection model, of any family: only what the distillation terms compare must
match the student (classes, strides, number of detection levels). End-to-end teachers (YOLOv10, YOLO26) emit both a
one-to-many and a one-to-one branch; the one-to-many branch is distilled, since it is the dense, NMS-style output the
student's own loss trains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from copy import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.nn.modules.head import Detect
from ultralytics.nn.tasks import DetectionModel, guess_model_task, load_checkpoint
from ultralytics.utils import LOGGER, RANK, colorstr
from ultralytics.utils.metrics import smooth

from ultralytics_kd.compat import for_validation
from ultralytics_kd.distill.settings import stock_args

__all__ = [
    "FrozenTeacher",
    "check_pair",
    "file_sha256",
    "load_teacher",
    "max_f1_conf",
    "preserved_rng",
    "teacher_file",
    "teacher_sha256",
    "validate_teacher",
]

PREFIX = colorstr("KD:")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, to notice a teacher file replaced between a run and its resume."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def teacher_file(args: Any) -> str | None:
    """The file the teacher's weights are loaded from: ``kd_teacher_weights`` for a YAML teacher, else ``teacher``."""
    return args.kd_teacher_weights or args.teacher


def teacher_sha256(args: Any) -> str:
    """Hash of the teacher's weights file (:func:`teacher_file`), or an error that says how to give a moved one."""
    path = teacher_file(args)
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"teacher file '{path}' not found. On resume, a teacher that moved can be given again: "
            f"yolo-kd train resume model=path/to/last.pt teacher=new/path/teacher.pt (its hash is checked)"
        )
    return file_sha256(path)


def _load_pt(path: Path) -> nn.Module:
    try:
        return load_checkpoint(path)[0]
    except Exception as e:  # any unreadable or foreign file: our cause and fix first, the loader's reason after it
        cause = e.__cause__ or e.__context__ or e
        raise ValueError(
            f"teacher '{path}' is not an Ultralytics checkpoint that torch can load ({type(cause).__name__}: "
            f"{str(cause).splitlines()[0] if str(cause) else 'no details'}). Pass the best.pt or last.pt of an "
            f"Ultralytics detection training run, e.g. teacher=runs/detect/train/weights/best.pt"
        ) from e


def load_teacher(path: str | Path | None, weights: str | Path | None = None, nc: int | None = None, ch: int = 3):
    """Load a teacher detection model, in fp32 and eval mode.

    Args:
        path (str | Path | None): A trained ``.pt`` checkpoint, or a model YAML (then ``weights`` is required).
        weights (str | Path, optional): Checkpoint whose weights fill a YAML teacher (all tensors must match).
        nc (int, optional): Classes for a YAML teacher.
        ch (int): Input channels for a YAML teacher.

    Returns:
        (DetectionModel): The teacher.

    Raises:
        FileNotFoundError: A path does not exist.
        ValueError: Not a detection model, or weights that do not fit the YAML.
    """
    if not path:
        raise ValueError("distillation needs a teacher: pass teacher=path/to/teacher.pt")
    path = Path(path)
    is_yaml = path.suffix in {".yaml", ".yml"}
    for p in (weights, None if is_yaml else path):  # stock YAML names (yolov8s.yaml) resolve inside Ultralytics
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"teacher file '{p}' not found; pass teacher=path/to/teacher.pt (an existing file)")
    if is_yaml:
        if weights is None:
            raise ValueError(
                f"teacher '{path}' is a YAML, which would give a randomly initialised teacher; also pass "
                f"kd_teacher_weights=path/to/weights.pt, or pass the trained .pt as teacher="
            )
        model = DetectionModel(str(path), nc=nc, ch=ch, verbose=False)
        src_model = _load_pt(Path(weights))
        model.names = getattr(src_model, "names", model.names)  # class names travel with the weights, not the YAML
        src, dst = src_model.float().state_dict(), model.state_dict()
        if bad := [k for k, v in dst.items() if k not in src or src[k].shape != v.shape]:
            raise ValueError(
                f"kd_teacher_weights='{weights}' does not fit teacher YAML '{path}' ({len(bad)} of {len(dst)} tensors "
                f"missing or mis-shaped, e.g. {bad[:3]}); pass the YAML the weights were trained with"
            )
        model.load_state_dict({k: src[k] for k in dst})
    else:
        model = _load_pt(path)
    # the head decides, not model.task: a checkpoint's task comes from its train args, which may be missing
    task = guess_model_task(model.yaml) if isinstance(getattr(model, "yaml", None), dict) else guess_model_task(model)
    head = model.model[-1] if hasattr(model, "model") else None
    if task != "detect" or not isinstance(head, Detect):
        raise ValueError(
            f"teacher '{path}' is a {task} model ({type(head).__name__} head); distillation needs a detection teacher "
            f"(task=detect), e.g. the best.pt of 'yolo detect train'"
        )
    return model.float().eval()


def check_pair(teacher: nn.Module, student: nn.Module | None = None, data: dict[str, Any] | None = None) -> list[str]:
    """Check that teacher and student (and dataset) can be distilled; return warnings for what only disables a term.

    Args:
        teacher (nn.Module): Teacher detection model.
        student (nn.Module, optional): Student detection model (stride computed); skipped when None.
        data (dict, optional): Dataset dict with ``nc`` and ``names``; skipped when None.

    Returns:
        (list[str]): Warnings; currently ``"reg_max"`` when the DFL bins differ (LD cannot run).

    Raises:
        ValueError: Classes, names, strides or detection levels differ.
    """
    th = teacher.model[-1]
    sh = student.model[-1] if student is not None else None
    if data is not None:
        names = list(data["names"].values()) if isinstance(data["names"], dict) else list(data["names"])
        t_names = list(teacher.names.values()) if isinstance(teacher.names, dict) else list(teacher.names)
        t_ch, d_ch = teacher.yaml.get("channels", 3), data.get("channels", 3)
        if t_ch != d_ch:
            raise ValueError(
                f"teacher takes {t_ch}-channel images but the dataset has {d_ch}; use a teacher trained on it"
            )
        if th.nc != data["nc"] or t_names != names:
            raise ValueError(
                f"teacher classes ({th.nc}: {t_names}) differ from the dataset's ({data['nc']}: {names}); train the "
                f"teacher on this dataset (same class list and order) or pass a teacher that was"
            )
    if student is None:
        return []
    if th.nl != sh.nl:
        raise ValueError(
            f"teacher has {th.nl} detection levels, student {sh.nl}; pick a teacher/student pair with the same "
            f"number of Detect inputs (e.g. both P3-P5)"
        )
    ts, ss = teacher.stride.detach().cpu().float(), student.stride.detach().cpu().float()
    if not torch.equal(ts, ss):
        raise ValueError(
            f"teacher strides {ts.tolist()} differ from student strides {ss.tolist()}; anchors must line up, so pick a "
            f"pair with the same strides (e.g. both P3-P5 = [8, 16, 32])"
        )
    return ["reg_max"] if th.reg_max != sh.reg_max else []


class FrozenTeacher(nn.Module):
    """A teacher that stays in eval mode, never requires grad and returns its one-to-many head outputs.

    Args:
        model (nn.Module): Teacher detection model.

    Examples:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> t = FrozenTeacher(DetectionModel("yolov8n.yaml", verbose=False))
        >>> out = t(torch.zeros(1, 3, 64, 64))
        >>> sorted(out)
        ['boxes', 'feats', 'head', 'scores']
    """

    def __init__(self, model: nn.Module):
        """Wrap, fuse and freeze.

        A one-to-many teacher is fused first (BN folded into its convs, plugin branches merged): the outputs stay the
        same to float precision and its forward, run on every training batch, gets cheaper (measured 1.09x on the
        YOLOv9-s BCCD teacher, 320 px, CPU). End-to-end teachers stay unfused, since fusing drops their one-to-many
        branch, the one distilled.
        """
        super().__init__()
        if getattr(model.model[-1], "one2one_cv2", None) is None and hasattr(model, "fuse"):
            model = model.fuse(verbose=False)
        self.model = model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode whatever is asked: BatchNorm statistics must never move with the student's batches."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> dict[str, Any]:
        """Run the teacher and return ``{"boxes", "scores", "feats"}`` of its one-to-many branch, plus its ``"head"``
        (the Detect module, for terms that run it on student features)."""
        out = self.model(img.to(next(self.model.parameters()).dtype))
        preds = out[1] if isinstance(out, tuple) else out
        return {**preds.get("one2many", preds), "head": self.model.model[-1]}


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python, NumPy and torch RNG states after the block.

    The teacher check runs a validation pass, which draws random numbers; without this a distilled run would see other
    augmentations and batch orders than a scratch run with the same seed, and the comparison would not be like for like.
    """
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class _TeacherValidator(DetectionValidator):
    """The stock validator without callbacks: integrations (W&B, MLflow, ...) log the student's run, not the teacher."""

    def run_callbacks(self, event: str) -> None:
        pass


def max_f1_conf(box: Any) -> float | None:
    """The confidence at which the smoothed class-mean F1 peaks: the stock operating point (``ap_per_class``), where
    the validator reports P and R; None without a curve (no class seen).

    Examples:
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> px = np.linspace(0, 1, 1000)
        >>> max_f1_conf(SimpleNamespace(px=px, f1_curve=np.stack([1 - abs(px - 0.3), 1 - abs(px - 0.4)])))
        0.35035035035035034
    """
    if not len(box.f1_curve):
        return None
    return float(box.px[smooth(box.f1_curve.mean(0), 0.1).argmax()])


def validate_teacher(model: nn.Module, dataloader, args: Any, save_dir: Path) -> dict:
    """Validate the teacher on the trainer's val loader; warn when it detects too little to teach anything.

    Every batch needs the teacher as loaded, while AutoBackend fuses what it validates and, for an end-to-end model,
    picks a branch by ``args.nms``; the stock standalone validator works on a copy (``get_model``), which
    tests/engine/test_teacher_check.py holds it to. The RNG states are restored afterwards (:func:`preserved_rng`).

    Args:
        model (nn.Module): The unfused teacher.
        dataloader: The trainer's val (``test_loader``) loader.
        args: The trainer's args; the distillation keys are hidden from the stock validator.
        save_dir (Path): The run folder.

    Returns:
        (dict): The validation metrics, plus ``max_f1_conf``, the confidence at which the class-mean F1 peaks (None
            without detections), for ``kd_pseudo_conf=auto``; empty on DDP ranks other than 0, which only contribute
            their shard.
    """
    with stock_args(args):
        args = copy(args)
    args.plots = args.save_json = False
    validator = _TeacherValidator(dataloader, save_dir=save_dir, args=args)
    with preserved_rng():
        metrics = validator(model=for_validation(model))
    if RANK > 0:
        return {}
    metrics["max_f1_conf"] = max_f1_conf(validator.metrics.box)
    m95, m50 = metrics.get("metrics/mAP50-95(B)", 0.0), metrics.get("metrics/mAP50(B)", 0.0)
    LOGGER.info(f"{PREFIX} teacher on '{args.split}': mAP50-95 {m95:.3f}, mAP50 {m50:.3f}")
    if m50 < 0.05:
        LOGGER.warning(
            f"{PREFIX} ⚠️ the teacher reaches only mAP50={m50:.3f} on this dataset: distilling from it will likely "
            f"make the student worse. Check that it was trained on this data (and class order), or set "
            f"kd_teacher_check=False to silence this check"
        )
    return metrics
