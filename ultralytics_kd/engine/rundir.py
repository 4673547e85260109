"""A run folder that a failed start leaves behind is removed, so bad input costs the user nothing but the message.

The stock trainer creates the run folder (and writes ``args.yaml``) in its ``__init__``, before the dataset is read; the
teacher can only be checked against the dataset after that. ``discard_on_error`` removes the folder again when the
start fails, but only a folder that did not exist before: an ``exist_ok=True`` run into an existing folder, or a
resumed run, keeps everything it had.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ultralytics.cfg import cfg2dict, get_cfg, get_save_dir
from ultralytics.utils import RANK

__all__ = ["discard_on_error", "new_run_dir"]


def new_run_dir(cfg: Any, overrides: dict[str, Any]) -> Path | None:
    """The run folder the stock trainer will create for ``cfg``/``overrides``, or None if it exists already (or the
    run resumes, or this is a DDP worker): only a folder this run creates may be removed again.

    Args:
        cfg: The trainer's base configuration.
        overrides (dict[str, Any]): The train arguments as given.
    """
    if overrides.get("resume") or RANK not in {-1, 0}:
        return None
    known = cfg2dict(cfg)  # keys the stock trainer pops or rejects itself (HUB's session, typos) play no part here
    planned = Path(get_save_dir(get_cfg(cfg, {k: v for k, v in overrides.items() if k in known})))
    return None if planned.exists() else planned


@contextmanager
def discard_on_error(run_dir: Path | None) -> Iterator[None]:
    """Remove ``run_dir`` (from :func:`new_run_dir`) if the block raises: the run failed before it trained."""
    try:
        yield
    except BaseException:
        if run_dir is not None and run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
