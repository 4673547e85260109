"""Images without labels (``unlabeled=``): the teacher teaches on them, the stock detection loss never sees them.

To Ultralytics an image without a label file is a background image, so unlabelled images simply added to ``train:``
would teach the student that they contain nothing. Here they come from a source of their own and a loader of their
own, with the same augmentation as the labelled images (mosaic and mixup therefore never paste a labelled and an
unlabelled image into one sample). An epoch covers every unlabelled image (``kd_unlabeled_sweep``): the labelled
images repeat within it as often as that takes, so an epoch is still one pass over every image the user has. Each
step appends a batch of unlabelled images (``kd_unlabeled_ratio`` of its size) to the labelled batch before the stock
preprocessing, so that the teacher and the student see the same augmented, resized view; ``KDBatch.n_labeled`` tells
the criterion where the labelled images end, the stock loss is computed on those only, and every distillation term is
computed on each kind apart, under columns of its own.

Examples:
    >>> from ultralytics import YOLO
    >>> from ultralytics_kd import KDTrainer
    >>> YOLO("yolov9t.yaml").train(trainer=KDTrainer, teacher="teacher.pt", data="data.yaml", unlabeled="more/images")
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from ultralytics.data import YOLODataset, build_dataloader
from ultralytics.data.utils import IMG_FORMATS, img2label_paths
from ultralytics.utils import LOCAL_RANK, LOGGER, RANK, colorstr

__all__ = [
    "UnlabeledStream",
    "find_unlabeled",
    "merge_unlabeled",
    "repeat_labeled",
    "run_unlabeled",
    "unlabeled_stream",
    "write_list",
]

LIST_NAME = "unlabeled.txt"  # the checked list, in the run folder: what the loader reads, and what a resume reuses


def _images_in(folder: Path) -> list[str]:
    """The image files under ``folder``, recursively, sorted (what Ultralytics reads from a folder source)."""
    return sorted(str(f) for f in folder.rglob("*.*") if f.suffix[1:].lower() in IMG_FORMATS)


def _listed(path: Path) -> list[str]:
    """The entries of a ``.txt`` image list; ``./`` entries resolve relative to the list, as in Ultralytics."""
    lines = [x.strip() for x in path.read_text(encoding="utf-8-sig").splitlines() if x.strip()]
    return [str(path.parent / x[2:]) if x.startswith("./") else x for x in lines]


def find_unlabeled(source: str | Path | Sequence[str | Path] | None, data: dict[str, Any]) -> list[str]:
    """The unlabelled image files of ``source``, checked; an empty list when there is no source.

    Args:
        source: A folder (searched recursively), a ``.txt`` list of image paths, or a list of these; relative paths
            are tried as given, then under the dataset's ``path``. None falls back to the data YAML's ``unlabeled``.
        data (dict[str, Any]): The checked dataset dict (``train`` paths, ``path``, optional ``unlabeled``).

    Returns:
        (list[str]): Sorted absolute image paths.

    Raises:
        FileNotFoundError: A source that does not exist.
        ValueError: A source with no images, a list naming files that are not images or do not exist, an image that
            has a label file, or an image that is also a training image; each names the files and the fix.
    """
    source = source if source is not None else data.get("unlabeled")
    if source is None or source == "":
        return []
    files: list[str] = []
    for s in source if isinstance(source, (list, tuple)) else [source]:
        p = Path(s)
        if not p.exists() and data.get("path") and (Path(data["path"]) / p).exists():
            p = Path(data["path"]) / p
        if p.is_dir():
            found = _images_in(p)
            if not found:
                raise ValueError(f"unlabeled='{s}' holds no images ({', '.join(sorted(IMG_FORMATS))}); check the path")
            files += found
        elif p.is_file() and p.suffix == ".txt":
            listed = _listed(p)
            if bad := [x for x in listed if x.rpartition(".")[-1].lower() not in IMG_FORMATS]:
                raise ValueError(
                    f"unlabeled='{s}' lists {len(bad)} file(s) that are not images, e.g. '{bad[0]}'; list only image "
                    f"files ({', '.join(sorted(IMG_FORMATS))})"
                )
            if missing := [x for x in listed if not Path(x).is_file()]:
                raise ValueError(f"unlabeled='{s}' lists {len(missing)} missing file(s), e.g. '{missing[0]}'")
            if not listed:
                raise ValueError(f"unlabeled='{s}' is an empty list; put one image path per line")
            files += listed
        elif p.is_file():
            raise ValueError(f"unlabeled='{s}' is neither a folder nor a .txt list of images; pass one of those")
        else:
            raise FileNotFoundError(f"unlabeled='{s}' not found; pass a folder of images or a .txt list of images")
    files = sorted({os.path.abspath(f) for f in files})
    if labelled := [f for f, lb in zip(files, img2label_paths(files)) if Path(lb).is_file()]:
        raise ValueError(
            f"{len(labelled)} unlabelled image(s) have a label file, e.g. '{labelled[0]}': an image with labels "
            f"belongs in the data YAML's train split. Remove those images from unlabeled=, or their label files"
        )
    train = _train_files(data)
    if shared := [f for f in files if f in train]:
        raise ValueError(
            f"{len(shared)} unlabelled image(s) are also training images, e.g. '{shared[0]}'; the two sets must not "
            f"overlap (a training image without a label file is a background image to Ultralytics)"
        )
    return files


def _train_files(data: dict[str, Any]) -> set[str]:
    """Absolute paths of the training images named by the dataset dict, as far as they can be listed."""
    out: set[str] = set()
    train = data.get("train")
    for s in train if isinstance(train, (list, tuple)) else [train]:
        p = Path(str(s)) if s else None
        if p is not None and p.is_dir():
            out |= {os.path.abspath(f) for f in _images_in(p)}
        elif p is not None and p.is_file() and p.suffix == ".txt":
            out |= {os.path.abspath(f) for f in _listed(p)}
    return out


def write_list(files: Sequence[str], path: Path) -> Path:
    """Write ``files`` as a ``.txt`` image list (the source the stock dataset builder reads); return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(files) + "\n")
    return path


def run_unlabeled(source: Any, data: dict[str, Any], save_dir: Path, resume: bool) -> list[str]:
    """The run's unlabelled images (``find_unlabeled``), written to its folder as the list its loader reads; a resumed
    run goes on with the list it started with, whatever the source folder holds now."""
    kept = Path(save_dir) / LIST_NAME
    files = find_unlabeled(kept if resume and kept.is_file() else source, data)
    if files and RANK in {-1, 0}:
        write_list(files, kept)
    return files


class UnlabeledDataset(YOLODataset):
    """A training dataset whose images have no label files by design.

    The stock scan refuses a training set in which no image has labels (a mistake for ``train:``, the point here), so
    the scan runs as for an evaluation set; loading and augmentation are the stock training ones.
    """

    def cache_labels(self, path: Path = Path("./labels.cache")) -> dict:
        """The stock label scan, without the training-set requirement that some image has labels."""
        augment, self.augment = self.augment, False
        try:
            return super().cache_labels(path)
        finally:
            self.augment = augment


def _repeated_len(self) -> int:
    """The repeated length, which the sampler (and so the epoch's step count) reads."""
    return len(self.labels) * self.kd_repeat


def _repeated_item(self, index: int):
    """The stock sample of image ``index`` modulo the dataset's own length."""
    return type(self).__mro__[1].__getitem__(self, index % len(self.labels))


def repeat_labeled(dataset: Any, n_unlabeled: int, ratio: float) -> int:
    """Repeat a labelled training ``dataset`` in place so that one epoch also covers ``n_unlabeled`` images; return
    how many times it repeats.

    Each labelled step brings ``ratio`` unlabelled images per labelled one, so the labelled images repeat
    ``ceil(n_unlabeled / (len(dataset) * ratio))`` times (at least once). Everything else about the dataset (labels,
    mosaic, ``close_mosaic``) is the stock one: only its length and the index it reads change. The class made for it is
    kept in this module so that a spawned dataloader worker can unpickle it.
    """
    n = len(dataset)
    times = max(1, math.ceil(n_unlabeled / (n * ratio))) if n else 1
    if times > 1:
        base = type(dataset)
        name = f"Repeated{base.__name__}"
        cls = globals().get(name)
        if cls is None or cls.__bases__ != (base,):  # one base: a mixin would change the layout __class__ needs
            ns = {"__len__": _repeated_len, "__getitem__": _repeated_item, "__module__": __name__, "__qualname__": name}
            cls = globals()[name] = type(name, (base,), ns)
        dataset.__class__ = cls
        dataset.kd_repeat = times
    return times


class UnlabeledStream:
    """Endless batches from the unlabelled loader: a new pass (and shuffle) starts whenever one ends.

    Args:
        loader: The stock (infinite-worker) dataloader over the unlabelled images.
    """

    def __init__(self, loader):
        """Keep the loader; the first pass starts at the first batch."""
        self.loader, self.epoch, self._it = loader, 0, None

    def __next__(self) -> dict[str, Any]:
        """The next batch, starting the next pass when this one is over."""
        if self._it is None:
            self._start()
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self._start()
            return next(self._it)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Itself."""
        return self

    def close_mosaic(self, args: Any) -> None:
        """Stop mosaic (and the augmentations closed with it) as the stock loop does for the labelled loader."""
        from copy import copy

        dataset = self.loader.dataset
        if hasattr(dataset, "mosaic"):
            dataset.mosaic = False
        if hasattr(dataset, "close_mosaic"):
            dataset.close_mosaic(hyp=copy(args))
        if hasattr(self.loader, "reset"):
            self.loader.reset()
        self._it = None

    def _start(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DDP: every rank shuffles its shard anew each pass
            sampler.set_epoch(self.epoch)
        self._it = iter(self.loader)


def merge_unlabeled(batch: dict[str, Any], extra: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Append the images of an unlabelled batch to a labelled one; return the batch and its number of labelled images.

    Labels (``cls``, ``bboxes``, ``batch_idx``) stay those of the labelled images, which come first, so the stock loss
    reads no target in an unlabelled image; per-image lists (file names, shapes) are concatenated.
    """
    n = batch["img"].shape[0]
    if extra["img"].shape[1:] != batch["img"].shape[1:]:
        raise ValueError(
            f"unlabelled images are {tuple(extra['img'].shape[2:])} but labelled ones {tuple(batch['img'].shape[2:])}; "
            f"both kinds train at imgsz (rect=True gives labelled batches their own shapes: use rect=False)"
        )
    merged = dict(batch)
    merged["img"] = torch.cat([batch["img"], extra["img"]])
    for k, v in batch.items():
        if k != "img" and isinstance(v, (list, tuple)) and isinstance(extra.get(k), (list, tuple)) and len(v) == n:
            merged[k] = type(v)([*v, *extra[k]])
    return merged, n


def unlabeled_stream(trainer: Any) -> UnlabeledStream | None:
    """The unlabelled images' loader of a trainer whose ``kd_unlabeled`` lists them (None when it lists none).

    Its batch is ``kd_unlabeled_ratio`` times the labelled batch (per DDP rank), from the list written to the run folder
    when the trainer checked the source; it has the training augmentation, mosaic included, among unlabelled images.
    """
    files = getattr(trainer, "kd_unlabeled", None)
    if not files:
        return None
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    if getattr(model.model[-1], "one2one_cv2", None) is not None:
        raise ValueError(
            "unlabeled= needs a one-to-many student (YOLOv8/9/11-style head); this one has an end-to-end head, whose "
            "one-to-one branch learns from labels alone. Use a one-to-many student, or drop unlabeled="
        )
    batch = max(1, round(trainer.batch_size // max(trainer.world_size, 1) * trainer.args.kd_unlabeled_ratio))
    a = trainer.args
    dataset = UnlabeledDataset(
        img_path=str(trainer.save_dir / LIST_NAME),
        imgsz=a.imgsz,
        batch_size=batch,
        augment=True,
        hyp=a,
        cache=a.cache or None,
        stride=int(max(model.stride.max(), 32)),
        prefix=colorstr("unlabeled: "),
        task=a.task,
        data=trainer.data,
    )
    loader = build_dataloader(dataset, batch, a.workers, shuffle=True, rank=LOCAL_RANK, device=trainer.device)
    plan = getattr(trainer, "kd_unlabeled_plan", None)  # distill/unlabeled_terms.py
    LOGGER.info(
        f"{colorstr('KD:')} {len(files)} unlabelled images ({trainer.args.unlabeled}): {batch} beside every labelled "
        f"batch, the labelled images {getattr(trainer.train_loader.dataset, 'kd_repeat', 1)} time(s) an epoch "
        f"(kd_unlabeled_sweep={trainer.args.kd_unlabeled_sweep}); they learn from the teacher only, under u*_loss: "
        + (plan.describe() if plan is not None else "the recipe's terms")
    )
    return UnlabeledStream(loader)
