"""``kd_report.md``: read what a run wrote (results.csv, args.yaml, kd_teacher.json), draw the plots, write Markdown.

Nothing here loads a checkpoint: the teacher's pre-training val metrics, which otherwise live only in the
checkpoint's ``"kd"`` entry, are written as ``kd_teacher.json`` beside results.csv when the trainer's report callback
hands them over, so ``yolo-kd report`` on a finished run reads a few bytes rather than unpickling a whole model.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER

from ultralytics_kd.distill.losses import TERMS, EntryMimic, FeatureMimic
from ultralytics_kd.distill.recipes import get_recipe
from ultralytics_kd.report.measure import ModelRow
from ultralytics_kd.report.plots import MAP, MAP50, plot_kd_losses, plot_map, plot_tradeoff

TEACHER_FILE = "kd_teacher.json"


def read_results(run: Path) -> dict[str, list[float]]:
    """Read a run's results.csv into columns (header names stripped, values as floats)."""
    with open(Path(run) / "results.csv") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            try:
                cols.setdefault(k.strip(), []).append(float(v))
            except (TypeError, ValueError):
                pass
    return cols


def table_markdown(rows: list[ModelRow]) -> str:
    """The comparison table in Markdown."""
    lines = [
        "| model | params | GFLOPs | latency ms (ORT CPU, b1) | mAP50-95 | mAP50 | file MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.model} | {r.params / 1e6:.2f} M | {r.gflops:.2f} | {r.latency_ms:.2f} | {r.map50_95:.3f} | "
        f"{r.map50:.3f} | {r.size_mb:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


def start_markdown(state: Mapping[str, Any], cols: Mapping[str, list[float]]) -> str:
    """How a distilled student started and which distillation terms trained in which epochs, as one paragraph.

    Args:
        state (Mapping[str, Any]): The checkpoint's ``"kd"`` entry (``settings``, ``inherited``, ``graft``,
            ``mimic``, ``transplanted``), as KDTrainer writes it.
        cols (Mapping[str, list[float]]): The run's results.csv columns (``read_results``); a term trained in the
            epochs where its ``train/kd*`` column is above zero.

    Returns:
        (str): Markdown naming the recipe, the start and each term with its epochs.
    """
    settings = state.get("settings") or {}
    if state.get("inherited"):
        start = "a uniform selection of the teacher's weights (weight selection)"
    elif state.get("graft"):
        start = "its random init, its backbone trained to reproduce the teacher's backbone outputs (graft stage), " + (
            "then its neck and head given a uniform selection of the teacher's (grafted)"
            if state.get("transplanted")
            else "and the run ended before the graft"
        )
    elif state.get("mimic"):
        start = "its random init, trained to imitate the teacher's Detect inputs (mimic stage), " + (
            "then given the teacher's Detect head (transplanted)"
            if state.get("transplanted")
            else "and the run ended before the head transplant"
        )
    else:
        start = "its random init"
    names = {
        t.item: t.name for t in (*TERMS.values(), FeatureMimic, EntryMimic)
    }  # results.csv has items; recipes say names
    epochs = [int(e) for e in cols["epoch"]]
    spans = {}  # term name -> epochs it trained in (its column above zero)
    for k in (c for c in cols if c.startswith("train/kd")):
        item = k.removeprefix("train/")
        spans[names.get(item, item)] = [e for e, v in zip(epochs, cols[k]) if v > 0]
    used = {e for on in spans.values() for e in on}
    terms = [
        f"`{name}` (epochs {_spans(on)})" if on else f"`{name}` (never)"
        for name, on in sorted(spans.items(), key=lambda kv: kv[1][:1] or [len(epochs) + 1])
    ]
    plain = [e for e in epochs if e not in used]
    terms += [f"the stock box/cls/dfl loss alone (epochs {_spans(plain)})"] if plain else []
    recipe = settings.get("kd_recipe")
    init = settings.get("kd_init") or get_recipe(recipe).init
    return (
        f"Distilled student (recipe `{recipe}`, kd_init `{init}`): started from {start}; "
        f"trained with {', '.join(terms) or 'no distillation term'}."
    )


def _spans(epochs: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    spans: list[list[int]] = []
    for e in epochs:
        if spans and e == spans[-1][1] + 1:
            spans[-1][1] = e
        else:
            spans.append([e, e])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


def write_report(
    run: str | Path,
    rows: list[ModelRow] | None = None,
    scratch: str | Path | None = None,
    notes: str = "",
    teacher_metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write ``kd_report.md`` and its plots into a KD run folder.

    Args:
        run (str | Path): The distilled student's run folder (holds results.csv, args.yaml).
        rows (list[ModelRow], optional): Comparison table rows (the demo measures teacher, scratch and distilled).
        scratch (str | Path, optional): A scratch student's run folder, drawn on the mAP plot for comparison.
        notes (str): Extra Markdown appended at the end.
        teacher_metrics (Mapping[str, float], optional): The teacher's val metrics under Ultralytics' keys (KDTrainer's
            ``kd_teacher_metrics``); saved as ``kd_teacher.json`` in ``run``. Omitted: read from that file, if any.

    Returns:
        (Path): The report file.
    """
    run = Path(run)
    if teacher_metrics:
        _write_teacher(run, teacher_metrics)
    teacher = _read_teacher(run)
    cols = read_results(run)
    losses = plot_kd_losses(cols, run / "kd_losses.png")
    mapplot = plot_map(cols, run / "kd_map.png", teacher, read_results(Path(scratch)) if scratch else None)
    lines = [f"# Distillation report: {run}", ""]
    args = _read_args(run)
    if args.get("teacher"):
        kd = {k: v for k, v in args.items() if k.startswith("kd_") and v is not None}
        lines += [f"Teacher: `{args['teacher']}`; settings: `{kd}`", ""]
    if teacher:
        lines += [
            f"Teacher on val before training: mAP50-95 {teacher['mAP50-95']:.3f}, mAP50 {teacher['mAP50']:.3f}",
            "",
        ]
    best = max(range(len(cols[MAP])), key=cols[MAP].__getitem__)
    lines += [
        f"Student: best val mAP50-95 {cols[MAP][best]:.3f} (mAP50 {cols[MAP50][best]:.3f}) at epoch "
        f"{int(cols['epoch'][best])} of {len(cols[MAP])}.",
        "",
    ]
    if rows:
        lines += ["## Comparison", "", table_markdown(rows), ""]
        plot = plot_tradeoff(rows, run / "kd_tradeoff.png")
        lines += [f"![accuracy vs latency]({plot.name})", ""]
    if losses:
        lines += ["## Distillation loss per term", "", f"![KD losses]({losses.name})", ""]
    lines += ["## Student vs teacher mAP", "", f"![mAP]({mapplot.name})", ""]
    if notes:
        lines += [notes, ""]
    out = run / "kd_report.md"
    out.write_text("\n".join(lines))
    if rows:
        (run / "kd_table.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    LOGGER.info(f"KD report written to {out}")
    return out


def cli(args: dict[str, Any]) -> Path:
    """``yolo-kd report run=<run folder> [scratch=<run folder>]``."""
    run = args.get("run")
    if not run:
        raise ValueError("yolo-kd report needs run=<folder of a training run>, e.g. run=runs/detect/train")
    if not (Path(run) / "results.csv").exists():
        raise FileNotFoundError(f"yolo-kd report: no results.csv in '{run}'. Point run= at a training run's folder.")
    return write_report(run, scratch=args.get("scratch"))


def _write_teacher(run: Path, metrics: Mapping[str, float]) -> None:
    """Keep the teacher's val metrics beside results.csv (plain floats: validators hand out numpy scalars)."""
    (run / TEACHER_FILE).write_text(json.dumps({k: float(v) for k, v in metrics.items()}, indent=2))


def _read_teacher(run: Path) -> dict[str, float] | None:
    """The teacher's val mAP from ``kd_teacher.json``; None for a run without one (no teacher check, or older)."""
    f = run / TEACHER_FILE
    metrics = json.loads(f.read_text()) if f.is_file() else {}
    if MAP not in metrics:
        return None
    return {"mAP50-95": metrics[MAP], "mAP50": metrics[MAP50]}


def _read_args(run: Path) -> dict:
    import yaml

    f = run / "args.yaml"
    return yaml.safe_load(f.read_text()) if f.exists() else {}
