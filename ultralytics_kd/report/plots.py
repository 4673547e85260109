"""The report's PNGs, drawn from numbers already read (results.csv columns, table rows).

Each plot is its own ``matplotlib.figure.Figure`` on an Agg canvas: this runs inside a user's training (the
``on_train_end`` callback), where switching pyplot's backend or registering figures with pyplot would change
their session, e.g. close a notebook's interactive backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ultralytics_kd.report.measure import ModelRow

MAP, MAP50 = "metrics/mAP50-95(B)", "metrics/mAP50(B)"
Columns = Mapping[str, Sequence[float]]


def plot_kd_losses(cols: Columns, out: Path) -> Path | None:
    """Plot every ``train/kd*`` loss column over epochs, beside the stock detection losses; None if there are none."""
    kd = sorted(k for k in cols if k.startswith("train/kd"))
    if not kd:
        return None
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    for k in kd:
        ax.plot(cols["epoch"], cols[k], marker=".", label=k.removeprefix("train/"))
    for k in ("train/box_loss", "train/cls_loss", "train/dfl_loss"):
        if k in cols:
            ax.plot(cols["epoch"], cols[k], ls="--", alpha=0.6, label=k.removeprefix("train/"))
    ax.set(xlabel="epoch", ylabel="loss", title="Distillation terms (solid) and detection losses (dashed)")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_map(
    cols: Columns, out: Path, teacher: Mapping[str, float] | None = None, scratch: Columns | None = None
) -> Path:
    """Plot the student's val mAP over epochs, the teacher's as a line, and optionally a scratch run's."""
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    ax.plot(cols["epoch"], cols[MAP], marker=".", label="student (distilled) mAP50-95")
    ax.plot(cols["epoch"], cols[MAP50], marker=".", alpha=0.6, label="student (distilled) mAP50")
    if scratch is not None:
        ax.plot(scratch["epoch"], scratch[MAP], ls=":", label="student (scratch) mAP50-95")
    if teacher:
        ax.axhline(teacher["mAP50-95"], color="k", ls="--", label=f"teacher mAP50-95 {teacher['mAP50-95']:.3f}")
    ax.set(xlabel="epoch", ylabel="mAP (val)", title="Student vs teacher")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_tradeoff(rows: Sequence[ModelRow], out: Path) -> Path:
    """Scatter mAP50-95 against ONNX Runtime latency, one labelled point per model."""
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    for r in rows:
        ax.scatter(r.latency_ms, r.map50_95, s=40)
        ax.annotate(f"{r.model}\n{r.params / 1e6:.2f} M", (r.latency_ms, r.map50_95), fontsize=8)
    ax.set(xlabel="latency, ONNX Runtime CPU, batch 1 (ms)", ylabel="mAP50-95 (val)", title="Accuracy vs latency")
    return _save(fig, out)


def _figure(size: tuple[float, float]) -> Figure:
    """A figure of its own on a file-only Agg canvas: no pyplot, no display, no global backend touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path) -> Path:
    fig.savefig(out, dpi=120)
    return Path(out)
