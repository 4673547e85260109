"""Record the torch calls of one forward pass of a model, and read what each does to the channel dimension.

``ChannelTrace.of(model)`` runs the model once on a small blank image under a ``TorchFunctionMode`` and keeps, for each
call that returns tensors, its function, its arguments (tensors by number, parameters and buffers by state-dict name),
and a key that two models of one layout share: the layer, the module path inside it, the function and how many times
that module called it before. ``channel_rule`` says what a call does to dim 1 (a convolution, a Concat, a split, a view
as attention heads, an element-wise op, or something the channel maps do not follow). ``channels.channel_plan`` pairs a
student's trace with its teacher's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["Call", "ChannelTrace", "Ref", "call_module", "channel_rule"]

_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_SPLITS = {"split", "chunk", "split_with_sizes", "tensor_split", "unbind"}
_CATS = {"cat", "concat", "concatenate"}
_VIEWS = {"view", "reshape", "flatten", "unflatten"}
_MOVES = {"transpose", "permute", "swapaxes", "swapdims", "movedim", "t"}
# calls that mix, pick or normalise channels in ways the maps do not follow (with a parameter read directly, any call)
_MIXING = {
    "matmul",
    "__matmul__",
    "bmm",
    "mm",
    "einsum",
    "linear",
    "__getitem__",
    "__setitem__",
    "index_select",
    "gather",
    "channel_shuffle",
    "group_norm",
    "layer_norm",
    "instance_norm",
    "normalize",
    "norm",
}
# calls along one dimension (its number the first argument after the tensor): fine unless it is the channel one
_ALONG = {"softmax", "log_softmax", "sum", "mean", "amax", "amin", "max", "min", "argmax", "cumsum", "std"}


@dataclass(frozen=True)
class Ref:
    """A tensor in a recorded call, by its number in the trace."""

    i: int


@dataclass
class Call:
    """One recorded torch call: its key, function, arguments, and the numbers of the tensors it read and returned."""

    key: tuple  # (layer, module path within the layer, function, how many times that module called it before)
    name: str
    args: Any  # the call's arguments, tensors as Ref and parameters or buffers by name (str)
    ins: list[int]
    outs: list[int]


@dataclass
class ChannelTrace:
    """The torch calls of one forward pass of a model, enough to pair its channels with another model's.

    Attributes:
        ops (list): The recorded calls in order.
        shapes (dict[int, tuple[int, ...]]): Shape of every recorded tensor.
        params (dict[int, str]): The recorded tensors that are parameters or buffers, by state-dict name.
        layer_out (dict[int, int]): Tensor number of each layer's output (layers of ``model.model``).
        input (int): Tensor number of the input image.
        state_shapes (dict[str, tuple[int, ...]]): Shape of every tensor of the model's state dict.
    """

    ops: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    layer_out: dict = field(default_factory=dict)
    input: int = -1
    state_shapes: dict = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def of(cls, model: nn.Module, imgsz: int = 64) -> ChannelTrace:
        """Run ``model`` once on a blank ``imgsz`` image in training mode (the whole head runs) and record its calls.

        Batch norms run on their running statistics, and every buffer (BN batch counts) and module mode is restored:
        nothing in the model changes.
        """
        p = next(x for x in model.parameters() if x.dim() == 4)
        x = torch.zeros(1, p.shape[1], imgsz, imgsz, device=p.device, dtype=p.dtype)
        modes = {m: m.training for m in model.modules()}
        buffers = [(b, b.clone()) for b in model.buffers()]
        rec, hooks = _Recorder(model), []
        for m in model.modules():  # each module once, a shared one (Conv's activation) too: its path is the caller's
            hooks.append(m.register_forward_pre_hook(lambda m, _a: rec.enter(m)))
            hooks.append(m.register_forward_hook(lambda _m, _a, _o: rec.stack.pop() and None))
        for j, m in enumerate(getattr(model, "model", ())):
            hooks.append(m.register_forward_hook(lambda _m, _a, o, j=j: rec.layer_out.__setitem__(j, o)))
        try:
            model.train()
            trace = cls(input=rec.number(x))
            with rec:
                model(x)
        finally:
            for h in hooks:
                h.remove()
            for m, mode in modes.items():
                m.training = mode
            for b, saved in buffers:
                b.copy_(saved)
        trace.ops, trace.shapes, trace.params = rec.ops, rec.shapes, rec.param_numbers
        trace.state_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        trace.layer_out = {j: rec.ids[id(o)] for j, o in rec.layer_out.items() if isinstance(o, torch.Tensor)}
        return trace


class _Recorder(TorchFunctionMode):
    """Records each torch call with tensor outputs, keyed by the innermost module running."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
        self.paths = {id(m): n for n, m in model.named_modules()}
        self.children = {(id(p), id(c)): n for p in model.modules() for n, c in p.named_children()}
        self.stack, self.ops, self.counts = [("", None)], [], Counter()
        self.ids, self.shapes, self.keep, self.param_numbers, self.layer_out = {}, {}, [], {}, {}

    def enter(self, m: nn.Module) -> None:
        """Push the path of module ``m`` as called from the running module (``model.2.m.0.cv1.act``)."""
        path, parent = self.stack[-1]
        name = self.children.get((id(parent), id(m)))
        self.stack.append((f"{path}.{name}" if path else name, m) if name is not None else (self.paths[id(m)], m))

    def number(self, t: torch.Tensor) -> int:
        if id(t) not in self.ids:
            self.ids[id(t)] = len(self.keep)
            self.keep.append(t)  # alive until the trace ends, so no id is reused
            self.shapes[self.ids[id(t)]] = tuple(t.shape)
            if id(t) in self.names:
                self.param_numbers[self.ids[id(t)]] = self.names[id(t)]
        return self.ids[id(t)]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is F.batch_norm:  # on running statistics: a 1x1 map of one image has no batch statistics
            args, kwargs = (), {**dict(zip(_BN_ARGS, args)), **kwargs, "training": False}
        elif name == "batch_norm":
            name = "torch.batch_norm"  # another argument order: not read as one
        out = func(*args, **kwargs)
        leaves = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if leaves:
            path = self.stack[-1][0]
            parts = path.split(".")
            in_layer = parts[0] == "model" and len(parts) > 1 and parts[1].isdigit()
            layer, sub = (int(parts[1]), ".".join(parts[2:])) if in_layer else (None, path)
            self.counts[(path, name)] += 1
            call = tree_map(lambda a: Ref(self.number(a)) if isinstance(a, torch.Tensor) else a, (args, kwargs))
            ins = [a.i for a in tree_flatten(call)[0] if isinstance(a, Ref)]
            self.ops.append(Call((layer, sub, name, self.counts[(path, name)]), name, call, ins, []))
            self.ops[-1].outs = [self.number(t) for t in leaves]  # after the inputs: an in-place op returns its input
        return out


# reading a recorded call ----------------------------------------------------------------------------------------------
def _arg(op: Call, i: int, name: str, default: Any = None) -> Any:
    args, kwargs = op.args
    return args[i] if len(args) > i else kwargs.get(name, default)


def _norm(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def call_module(op: Call) -> str:
    layer, sub, _, _ = op.key
    return ".".join(str(x) for x in ("model", layer, sub) if x != "") if layer is not None else sub or "the model"


def channel_rule(op: Call, shapes: dict, params: dict) -> tuple:
    """What a call does to the channel dimension (dim 1) of the tensors it reads, as a tuple headed by its kind.

    ``conv`` (input, weight, bias, groups, transposed), ``bn`` (input, its tensors' names), ``cat`` (inputs),
    ``split`` (input), ``heads`` (a view of the channels as attention heads and their channels), ``merge`` (its
    inverse), ``same`` (element-wise on channels, or along another dimension: the tracked inputs must share one map) and
    ``opaque``.
    """
    name = op.name
    first = op.ins[0] if op.ins else None
    nd = len(shapes[first]) if first is not None else 0
    if name in {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}:
        x, w, transposed = _arg(op, 0, "input"), _arg(op, 1, "weight"), name.startswith("conv_transpose")
        return "conv", x.i, w.i, _arg(op, 2, "bias"), _arg(op, 6, "groups", 1), transposed
    if name == "batch_norm":
        stats = [_arg(op, i, n) for i, n in enumerate(_BN_ARGS[:5])]
        return "bn", stats[0].i, [params[a.i] for a in stats[1:] if isinstance(a, Ref) and a.i in params]
    if name in _CATS:
        xs = [a.i for a in _arg(op, 0, "tensors")]
        nd = len(shapes[xs[0]])
        if nd >= 2 and _norm(_arg(op, 1, "dim", 0), nd) == 1:
            return "cat", xs
    if name in _SPLITS and nd >= 2:
        dim = _arg(op, 1 if name == "unbind" else 2, "dim", 0)
        if _norm(dim, nd) == 1:
            return ("split", first) if name != "unbind" else ("opaque",)
        return ("same", [first])
    if name in _VIEWS and nd >= 2:
        a, b = shapes[first], shapes[op.outs[0]]
        if len(b) >= 2 and a[:2] == b[:2]:
            return "same", [first]
        if len(b) >= 3 and a[0] == b[0] and b[1] * b[2] == a[1] and _prod(b[3:]) == _prod(a[2:]):
            return "heads", first
        if len(a) >= 3 and a[0] == b[0] and a[1] * a[2] == b[1] and _prod(a[3:]) == _prod(b[2:]):
            return "merge", first
        return ("opaque",)
    if name in _MOVES and nd >= 2:
        dims = [d for a in op.args[0][1:] for d in (a if isinstance(a, (list, tuple)) else [a])]
        if name in {"movedim", "t"} or len(dims) < 2:  # dims given by keyword: not read, so not followed
            return ("opaque",)
        moved = _norm(dims[1], nd) != 1 if name == "permute" else 1 in {_norm(d, nd) for d in dims[:2]}
        return ("opaque",) if moved else ("same", [first])
    if name in _ALONG and not isinstance(_arg(op, 1, "dim"), Ref):  # torch.max(a, b) is element-wise
        dim = _arg(op, 1, "dim")
        over_channels = dim is None or isinstance(dim, (list, tuple)) or _norm(dim, nd) == 1
        return ("opaque",) if over_channels else ("same", [first])
    if name in {"matmul", "__matmul__"} and all(len(shapes[i]) >= 4 for i in op.ins):
        return "same", op.ins  # dim 1 is a batch dimension (attention heads)
    if name in _MIXING or any(i in params for i in op.ins):
        return ("opaque",)
    outs = [shapes[o] for o in op.outs]
    if outs and all(len(s) >= 2 and s[1] == outs[0][1] for s in outs):
        ins = [i for i in op.ins if i not in params and len(shapes[i]) >= 2 and shapes[i][1] != 1]
        if all(shapes[i][1] == outs[0][1] for i in ins):
            return "same", ins
    return ("opaque",)


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n
