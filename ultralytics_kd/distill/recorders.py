"""Capture intermediate feature maps with forward hooks that exist only while they are needed.

Hooks left on a model leak into everything that copies it (the EMA's deepcopy, checkpoints pickled by ``save_model``),
so a recorder registers its hooks on entry and removes them on exit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeatureRecorder"]


class FeatureRecorder:
    """Record the outputs of chosen layers of an Ultralytics model (indices into ``model.model``).

    Args:
        model (nn.Module): Model whose ``model`` attribute is the layer sequence (any Ultralytics ``BaseModel``).
        layers (Sequence[int]): Layer indices to record, in the order ``features`` returns them.

    Examples:
        >>> from ultralytics.nn.tasks import DetectionModel
        >>> import torch
        >>> m = DetectionModel("yolov8n.yaml", verbose=False).eval()
        >>> with FeatureRecorder(m, [15, 18, 21]) as rec:
        ...     _ = m(torch.zeros(1, 3, 64, 64))
        >>> [f.shape[-1] for f in rec.features]
        [8, 4, 2]
    """

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        """Remember where to hook; nothing is registered until the recorder is entered."""
        self.layers = [int(i) for i in layers]
        n = len(model.model)
        if bad := [i for i in self.layers if not -n <= i < n]:
            raise ValueError(f"feature layers {bad} out of range for a model with {n} layers")
        self._modules = [model.model[i] for i in self.layers]
        self._outputs: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def start(self) -> FeatureRecorder:
        """Register the hooks (idempotent) and forget earlier outputs."""
        self._outputs.clear()
        if not self._handles:
            for k, m in enumerate(self._modules):
                self._handles.append(m.register_forward_hook(self._hook(k)))
        return self

    def stop(self) -> None:
        """Remove the hooks; recorded outputs stay readable until the next start."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, k: int):
        def hook(module, inputs, output):
            self._outputs[k] = output

        return hook

    def __enter__(self) -> FeatureRecorder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def features(self) -> list[torch.Tensor]:
        """Recorded outputs in ``layers`` order."""
        if len(self._outputs) != len(self.layers):
            raise RuntimeError(f"recorded {len(self._outputs)} of {len(self.layers)} layers: run a forward pass first")
        return [self._outputs[k] for k in range(len(self.layers))]

    def pop(self) -> list[torch.Tensor]:
        """Return the recorded outputs, remove the hooks and drop the references (the student's per-batch use)."""
        feats = self.features
        self.stop()
        self._outputs.clear()
        return feats
