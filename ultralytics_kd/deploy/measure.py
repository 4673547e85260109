"""How the plugin measures a deployed model: one latency timer and one parity check, for reports and benchmarks alike.

``time_calls`` times callables (a PyTorch model, an ONNX Runtime session, an engine runner, pre- or post-processing)
on one input; ``parity`` compares an export's raw head output with PyTorch's, and ``parity_ok`` judges it with the
tolerance of its runtime. ``yolo-kd demo``, ``kd_report.md`` and every script in ``benchmarks/`` go through these, so
a latency or a parity figure means the same thing wherever it is printed.

Examples:
    >>> from ultralytics_kd.deploy import OnnxRunner
    >>> from ultralytics_kd.deploy.measure import parity, parity_ok, time_call
    >>> runner = OnnxRunner("best.onnx")
    >>> x = torch.rand(1, 3, *runner.imgsz)
    >>> time_call(runner.forward, x).median  # ms, batch 1
    >>> diff = parity(runner(x)[0], model(x)[0], imgsz=runner.imgsz[0])
    >>> parity_ok(diff, "onnxruntime-cpu")
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PARITY_ATOL", "PARITY_COSINE", "Latency", "parity", "parity_ok", "parity_rule", "time_call", "time_calls"]

# Max abs difference (boxes / imgsz, class scores as they are) allowed against PyTorch for FP32 runtimes. On a CUDA
# device cuDNN picks other kernels than PyTorch's CPU path, so 1e-3 there; FP16/INT8 are judged by cosine instead.
PARITY_ATOL = {"onnxruntime-cpu": 1e-4, "onnxruntime-cuda": 1e-3, "trt-fp32": 1e-3}
PARITY_COSINE = 0.999


@dataclass(frozen=True)
class Latency:
    """Wall times of one callable, in ms, in call order.

    Attributes:
        ms (tuple[float, ...]): One entry per timed call.
    """

    ms: tuple[float, ...]

    @property
    def median(self) -> float:
        """Median call time in ms."""
        return statistics.median(self.ms)

    @property
    def p90(self) -> float:
        """90th-percentile call time in ms (the sorted value at index 0.9 n)."""
        s = sorted(self.ms)
        return s[min(len(s) - 1, int(0.9 * len(s)))]

    def ratio(self, other: Latency) -> float:
        """Median of the per-iteration ratios ``self / other``, for two callables timed together by ``time_calls``:
        load from the rest of the machine hits both calls of an iteration alike, so it cancels in the ratio."""
        return statistics.median(a / b for a, b in zip(self.ms, other.ms))


def time_calls(
    fns: Mapping[str, Callable[[Any], Any]],
    x: Any,
    warmup: int = 5,
    reps: int = 30,
    sync: Callable[[], None] | None = None,
) -> dict[str, Latency]:
    """Time each callable on ``x``: ``warmup`` untimed calls each, then ``reps`` timed iterations.

    Every iteration calls each callable once, in an order rotated by one per iteration, so no variant always runs
    first (cold caches) or last; :meth:`Latency.ratio` compares two of them within iterations.

    Args:
        fns (Mapping[str, Callable]): Name -> callable taking ``x``.
        x (Any): The input, prepared once (a tensor or array already on the right device).
        warmup (int): Untimed calls per callable before timing.
        reps (int): Timed iterations.
        sync (Callable, optional): Called before and after each timed call, e.g. ``torch.cuda.synchronize``, so an
            asynchronous device is timed to completion.

    Returns:
        (dict[str, Latency]): Name -> its call times.
    """
    names = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(reps):
        for k in names[i % len(names) :] + names[: i % len(names)]:
            if sync:
                sync()
            t = time.perf_counter()
            fns[k](x)
            if sync:
                sync()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: Latency(tuple(v)) for k, v in times.items()}


def time_call(
    fn: Callable[[Any], Any], x: Any, warmup: int = 5, reps: int = 30, sync: Callable[[], None] | None = None
) -> Latency:
    """Time one callable on ``x``; see :func:`time_calls`."""
    return time_calls({"fn": fn}, x, warmup, reps, sync)["fn"]


def parity(out: torch.Tensor, ref: torch.Tensor, imgsz: int) -> dict[str, float]:
    """How far an export's raw head output (B, 4 + nc, anchors) is from PyTorch's.

    Boxes come in pixels, so float32 rounding alone reaches ~1e-3 on 320-px coordinates; ``max_abs`` therefore takes
    boxes divided by ``imgsz`` (image-relative units) and class scores as they are, and ``box_px`` reports the
    largest box difference in pixels. ``cosine`` is over the whole raw output.

    Args:
        out (torch.Tensor): The export's output.
        ref (torch.Tensor): PyTorch's output for the same input.
        imgsz (int): Input side in pixels.

    Returns:
        (dict[str, float]): ``max_abs``, ``box_px``, ``score_max_abs`` and ``cosine``.
    """
    out, ref = out.float().cpu(), ref.float().cpu()
    box = (out[:, :4] - ref[:, :4]).abs().max().item()
    score = (out[:, 4:] - ref[:, 4:]).abs().max().item()
    return {
        "max_abs": max(box / imgsz, score),
        "box_px": box,
        "score_max_abs": score,
        "cosine": torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item(),
    }


def parity_rule(runtime: str) -> str:
    """The rule ``parity_ok`` applies to ``runtime``, for tables: ``"atol 0.0001"`` or ``"cos>=0.999"``."""
    tol = PARITY_ATOL.get(runtime)
    return f"atol {tol}" if tol else f"cos>={PARITY_COSINE}"


def parity_ok(diff: Mapping[str, float], runtime: str) -> bool:
    """Whether a :func:`parity` result passes: ``max_abs`` within ``PARITY_ATOL[runtime]`` for an FP32 runtime,
    ``cosine >= PARITY_COSINE`` for any other (FP16, INT8)."""
    tol = PARITY_ATOL.get(runtime)
    return diff["max_abs"] <= tol if tol else diff["cosine"] >= PARITY_COSINE
