"""Channel maps for weight selection: which teacher channel each student channel of each tensor boundary takes.

A single evenly spaced index over a whole dimension pairs the right channels only where that dimension has one
student-to-teacher ratio. A layer that reads a Concat whose parts have different ratios (YOLOv8-n's 64 + 128 against
YOLOv8-m's 192 + 384), or a C2f whose student has fewer bottlenecks, would read another teacher channel's weights. So
the maps here follow the tensors: ``tracing.ChannelTrace`` records, once per model, the torch calls of one forward
pass on a small input (convolutions and batch norms by the name of their weights, concatenations, splits, views,
element-wise ops), each keyed by the module that made it. ``channel_plan`` then gives every convolution's output an
evenly spaced map *within each part* that its consumers split it into (``chunk``, ``split``, attention heads, which
are taken whole), concatenates maps across a Concat with the teacher's offsets, and walks the student's calls next to
the teacher's to check that every split, residual add and view lines up. What it cannot follow exactly is a one-line
reason, never a silent guess.

With the plan, the selected student computes exactly what the teacher would if every teacher channel it drops were
zero (``tests/distill/test_inherit.py`` checks this on stock pairs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ultralytics_kd.distill.tracing import Call, ChannelTrace, Ref, call_module, channel_rule

__all__ = ["channel_plan", "uniform_index"]


def uniform_index(n_student: int, n_teacher: int) -> torch.Tensor:
    """``n_student`` evenly spaced indices into ``range(n_teacher)``, starting at 0 (all of them when equal)."""
    return torch.arange(n_student) * n_teacher // n_student


# pairing two traces ---------------------------------------------------------------------------------------------------
class _Side:
    """One model's trace as seen from the student: op keys with the student's layer numbers, tensors by key."""

    def __init__(self, trace: ChannelTrace, fixed: dict[int, tuple], shift: int = 0, start: int | None = None):
        self.shapes, self.params, self.fixed = trace.shapes, trace.params, fixed
        self.ops = [op for op in trace.ops if start is None or (op.key[0] is not None and op.key[0] >= start)]
        self.by_key, self.made, self.out = {}, {}, {}
        for op in self.ops:
            op_key = (op.key[0] - shift if op.key[0] is not None else None, *op.key[1:])
            self.by_key[op_key] = op
            for i, o in enumerate(op.outs):
                self.made[o], self.out[(op_key, i)] = (op_key, i), o
        for n, key in fixed.items():  # the input, or a graft's entries: paired by layer, not by call
            self.made[n], self.out[key] = key, n


def _slice(segs: list, a: int, b: int) -> list:
    """Positions ``a`` to ``b`` of a tensor made of ``segs`` (source, first, end channel), as segments."""
    out, pos = [], 0
    for src, lo, hi in segs:
        s, e = max(a, pos), min(b, pos + hi - lo)
        if s < e:
            out.append((src, lo + s - pos, lo + e - pos))
        pos += hi - lo
    return out


def _locate(segs: list, p: int) -> tuple | None:
    """The source and its channel at position ``p`` of a tensor, or None where ``p`` falls between two sources."""
    pos = 0
    for src, lo, hi in segs:
        if pos < p < pos + hi - lo:
            return src, lo + p - pos
        pos += hi - lo
    return None


def _depthwise(groups: int, weight: tuple) -> bool:
    """One group per output channel, each reading one input channel (its weight's shape is ``weight``)."""
    return groups > 1 and weight[1] == 1 and weight[0] == groups


def _parts(side: _Side) -> tuple[dict, dict, dict]:
    """Where one model's consumers cut each convolution's output: the cuts of every split (by call), the head size of
    every output viewed as attention heads, and each output's width."""
    shapes, keys = side.shapes, {id(op): k for k, op in side.by_key.items()}
    prov = {n: [(key, 0, shapes[n][1])] for n, key in side.fixed.items()}
    cuts, units, widths = {}, {}, {}
    for op in side.ops:
        rule, k = channel_rule(op, shapes, side.params), keys[id(op)]
        kind, out = rule[0], op.outs[0]
        if kind == "conv":
            x, w, groups = rule[1], rule[2], rule[4]
            if _depthwise(groups, shapes[w]):
                prov[out] = prov.get(x)
            else:
                prov[out], widths[k] = [(k, 0, shapes[out][1])], shapes[out][1]
        elif kind == "bn" and rule[1] in prov:
            prov[out] = prov[rule[1]]
        elif kind == "cat" and all(prov.get(x) for x in rule[1]):
            prov[out] = [s for x in rule[1] for s in prov[x]]
        elif kind == "split" and prov.get(rule[1]):
            ends = [0]
            for o in op.outs:
                ends.append(ends[-1] + shapes[o][1])
                prov[o] = _slice(prov[rule[1]], ends[-2], ends[-1])
            cuts[k] = [_locate(prov[rule[1]], p) for p in ends[1:-1]]
        elif kind == "heads" and prov.get(rule[1]) and len(prov[rule[1]]) == 1:
            src, lo, hi = prov[rule[1]][0]
            if lo == 0 and hi == widths.get(src):
                units[src] = shapes[out][2]
        elif kind == "same":
            known = [prov[i] for i in rule[1] if prov.get(i) and shapes[i][1] == shapes[out][1]]
            for o in op.outs:
                if known:
                    prov[o] = known[0]
    return cuts, units, widths


def _choose(student: _Side, teacher: _Side) -> tuple[dict | None, str | None]:
    """Each student convolution output's map: evenly spaced within each part its consumers cut it into."""
    s_cuts, s_units, s_widths = _parts(student)
    t_cuts, t_units, t_widths = _parts(teacher)
    bounds: dict[tuple, set] = {}
    for k, cs in s_cuts.items():
        for a, b in zip(cs, t_cuts.get(k, ())):
            if a and b and a[0] == b[0]:
                bounds.setdefault(a[0], set()).add((a[1], b[1]))
    maps = {}
    for src, s in s_widths.items():
        t = t_widths.get(src)
        if t is None:
            continue  # no teacher convolution to pair with: the walk says where
        if src in s_units and s_units[src] == t_units.get(src):
            per = s_units[src]
            heads = uniform_index(s // per, t // per)
            maps[src] = (heads[:, None] * per + torch.arange(per)).flatten()
            continue
        pairs = sorted(bounds.get(src, set()) | {(0, 0), (s, t)})
        if any(b[0] <= a[0] or b[1] <= a[1] or b[0] - a[0] > b[1] - a[1] for a, b in zip(pairs, pairs[1:])):
            where = call_module(student.by_key[src])
            return None, f"the consumers of {where} cut its {s} channels and the teacher's {t} at {pairs[1:-1]}"
        maps[src] = torch.cat([q + uniform_index(p1 - p, q1 - q) for (p, q), (p1, q1) in zip(pairs, pairs[1:])])
    return maps, None


class _Refuse(Exception):
    """A pair of tensors whose channels the plan cannot pair exactly; the message is the one-line reason."""


def _full(m: torch.Tensor, width: int) -> bool:
    return len(m) == width and torch.equal(m, torch.arange(width))


class _Walk:
    """Carries the maps through the student's calls next to the teacher's, and each parameter's maps out of them.

    A student tensor's map gives, for each of its channels (dim 1), the channel of the paired teacher tensor it holds;
    after a view as attention heads, dim 1 counts heads (``heads``) and the map gives teacher heads.
    """

    def __init__(self, student: _Side, teacher: _Side, chosen: dict):
        self.s, self.t, self.chosen = student, teacher, chosen
        self.maps = {n: (uniform_index(student.shapes[n][1], self._twidth(n)), False) for n in student.fixed}
        self.found: dict[str, list] = {}

    def run(self) -> dict[str, list]:
        """Each student parameter's indices into the teacher's, per dim (None: all).

        Raises:
            _Refuse: Where a split, add, view or call pairs student and teacher channels inconsistently.
        """
        keys = {id(op): k for k, op in self.s.by_key.items()}
        for op in self.s.ops:
            top = self.t.by_key.get(keys[id(op)])
            rule = channel_rule(op, self.s.shapes, self.s.params)
            trule = channel_rule(top, self.t.shapes, self.t.params) if top else ("opaque",)
            if rule[0] == "opaque" or trule[0] != rule[0]:
                self.opaque(op, top, rule[0] == "opaque" or top is None)
                continue
            getattr(self, rule[0])(op, top, rule[1:], trule[1:], keys[id(op)])
            for o, to in zip(op.outs, top.outs):
                a, b = self.s.shapes[o], self.t.shapes[to]
                if o in self.maps and (len(a) != len(b) or any(x != y for d, (x, y) in enumerate(zip(a, b)) if d != 1)):
                    raise _Refuse(f"`{op.name}` in {call_module(op)} gives a {a} tensor where the teacher's is {b}")
        return self.found

    def _twidth(self, n: int) -> int:
        """Width of the teacher tensor paired with student tensor ``n`` (-1 without one)."""
        t = self.t.out.get(self.s.made.get(n))
        return self.t.shapes[t][1] if t is not None else -1

    def _map(self, n: int, op: Call) -> tuple[torch.Tensor, bool]:
        if n not in self.maps:
            raise _Refuse(f"cannot follow the channels into {call_module(op)}")
        return self.maps[n]

    def _record(self, name: str, dims: list) -> None:
        old = self.found.setdefault(name, dims)
        if any((a is None) != (b is None) or (a is not None and not torch.equal(a, b)) for a, b in zip(old, dims)):
            raise _Refuse(f"'{name}' is used twice with different channels")

    # one method per kind of call (``channel_rule``) -------------------------------------------------------------------
    def opaque(self, op: Call, top: Call | None, unknown: bool = True) -> None:
        """A call the maps do not follow (``unknown``), or that the teacher's does not match: fine on whole tensors
        only, whose outputs are whole where the shapes agree."""
        if any(i in self.maps and not _full(self.maps[i][0], self._twidth(i)) for i in op.ins):
            where = call_module(op)
            if not unknown:
                raise _Refuse(f"`{op.name}` in {where} does not do to the channels what the teacher's call there does")
            if top is None:
                raise _Refuse(f"the teacher has no call like `{op.name}` in {where}")
            raise _Refuse(f"cannot follow `{op.name}` in {where} on a subset of the teacher's channels")
        for o, to in zip(op.outs, top.outs if top else ()):
            if self.s.shapes[o] == self.t.shapes[to] and len(self.s.shapes[o]) >= 2:
                self.maps[o] = (torch.arange(self.s.shapes[o][1]), False)

    def conv(self, op: Call, top: Call, rule: tuple, trule: tuple, key: tuple) -> None:
        """Reads the input's map; writes the map chosen for its output (a depthwise one keeps its input's). A
        transposed convolution's weight has its input channels first."""
        x, w, b, groups, transposed = rule
        mx = self._map(x, op)[0]
        if groups == 1 and trule[3] == 1:
            if key not in self.chosen:
                raise _Refuse(f"{call_module(op)} has no teacher convolution to pair with")
            m, dims = self.chosen[key], [self.chosen[key], mx][:: -1 if transposed else 1]
        elif _depthwise(groups, self.s.shapes[w]) and _depthwise(trule[3], self.t.shapes[trule[1]]):
            m, dims = mx, [mx, None]
        else:
            raise _Refuse(f"{call_module(op)} is a grouped convolution ({groups} and {trule[3]} groups)")
        self._record(self.s.params[w], dims)
        if isinstance(b, Ref):
            self._record(self.s.params[b.i], [m])
        self.maps[op.outs[0]] = (m, False)

    def bn(self, op: Call, top: Call, rule: tuple, trule: tuple, key: tuple) -> None:
        x, names = rule
        for name in names:
            self._record(name, [self._map(x, op)[0]])
        self.maps[op.outs[0]] = self.maps[x]

    def cat(self, op: Call, top: Call, rule: tuple, trule: tuple, key: tuple) -> None:
        """Each input's map, moved to where the teacher's concatenation holds the paired tensor."""
        offsets, at = {}, 0
        for tx in trule[0]:
            offsets[self.t.made.get(tx)], at = at, at + self.t.shapes[tx][1]
        parts = []
        for x in rule[0]:
            if self.s.made.get(x) not in offsets:
                raise _Refuse(f"{call_module(op)} concatenates a tensor that the teacher's concatenation does not have")
            parts.append(self._map(x, op)[0] + offsets[self.s.made[x]])
        self.maps[op.outs[0]] = (torch.cat(parts), False)

    def split(self, op: Call, top: Call, rule: tuple, trule: tuple, key: tuple) -> None:
        """Each part's map, relative to the teacher's part, which must hold all of it."""
        (mx, heads), a, ta = self._map(rule[0], op), 0, 0
        if len(op.outs) != len(top.outs):
            raise _Refuse(f"the split in {call_module(op)} gives {len(op.outs)} parts, the teacher's {len(top.outs)}")
        for o, to in zip(op.outs, top.outs):
            n, tn = self.s.shapes[o][1], self.t.shapes[to][1]
            part = mx[a : a + n] - ta
            if len(part) and (part.min() < 0 or part.max() >= tn):
                raise _Refuse(
                    f"the split in {call_module(op)} cuts the teacher's channels where the student's are not cut"
                )
            self.maps[o], a, ta = (part, heads), a + n, ta + tn

    def heads(self, op: Call, top: Call, rule: tuple, trule: tuple, key: tuple) -> None:
        """Channels viewed as (heads, channels per head): whole heads of the teacher's size, mapped to its heads."""
        mx, heads = self._map(rule[0], op)
        per, tper = self.s.shapes[op.outs[0]][2], self.t.shapes[top.outs[0]][2]
        if heads:
            raise _Refuse(f"cannot follow the view in {call_module(op)}")
        if per != tper:
            raise _Refuse(f"{call_module(op)} has attention heads of {per} channels where the teacher's have {tper}")
        rows = mx.view(-1, per)
        if not (torch.equal(rows, rows[:, :1] + torch.arange(per)) and (rows[:, 0] % per == 0).all()):
            raise _Refuse(f"the selection in {call_module(op)} does not take whole attention heads")
        self.maps[op.outs[0]] = (rows[:, 0] // per, True)

    def merge(self, op: Call, top: Call, rule: tuple, trule: tuple, key: tuple) -> None:
        """Heads viewed as channels again (their size is the teacher's: the shape check after each call)."""
        m, heads = self._map(rule[0], op)
        if not heads:
            raise _Refuse(f"cannot follow the view in {call_module(op)}")
        per = self.s.shapes[rule[0]][2]
        self.maps[op.outs[0]] = ((m[:, None] * per + torch.arange(per)).flatten(), False)

    def same(self, op: Call, top: Call, rule: tuple, trule: tuple, key: tuple) -> None:
        """Element-wise (a residual add, an activation) or along another dim: one map in, the same map out."""
        seen = [self.maps[i] for i in rule[0] if i in self.maps]
        if any(h != seen[0][1] or not torch.equal(m, seen[0][0]) for m, h in seen[1:]):
            raise _Refuse(f"`{op.name}` in {call_module(op)} joins tensors that hold different teacher channels")
        for o in op.outs if seen else ():
            self.maps[o] = seen[0]


def channel_plan(
    student: nn.Module, teacher: nn.Module | ChannelTrace | None, graft: Any = None
) -> tuple[dict[str, tuple[str, list]] | None, str | None]:
    """Which teacher tensor, and which indices on each of its dims, every student tensor takes.

    Args:
        student (nn.Module): The student, an Ultralytics model.
        teacher (nn.Module | ChannelTrace): The unfused teacher, or ``ChannelTrace.of(teacher)``.
        graft (inherit.Graft, optional): Plan only the grafted layers, fed by the backbone outputs in
            ``graft.entries``, each taking evenly spaced teacher channels (as ``EntryMimic`` trains them to).

    Returns:
        (tuple[dict | None, str | None]): ``{student key: (teacher key, [indices or None per dim])}`` and None, or None
            and a one-line reason why the channels cannot be paired exactly.
    """
    if teacher is None:
        return None, "the teacher's calls were not traced (TeacherParts.of traces them for kd_init=auto/select/graft)"
    s_trace = ChannelTrace.of(student)
    t_trace = teacher if isinstance(teacher, ChannelTrace) else ChannelTrace.of(teacher)
    if graft is None:
        start, shift, s_fixed = None, 0, {s_trace.input: ("input",)}
        t_fixed = {t_trace.input: ("input",)}
    else:
        start, shift = graft.start, graft.offset
        s_fixed = {s_trace.layer_out[a]: ("entry", a) for a, _ in graft.entries}
        t_fixed = {t_trace.layer_out[b]: ("entry", a) for a, b in graft.entries}
    s_side = _Side(s_trace, s_fixed, 0, start)
    t_side = _Side(t_trace, t_fixed, shift, None if start is None else start + shift)
    chosen, why = _choose(s_side, t_side)
    if why:
        return None, why
    try:
        found = _Walk(s_side, t_side, chosen).run()
    except _Refuse as e:
        return None, str(e)
    t_shapes = t_trace.state_shapes
    plan = {}
    for k, v in student.state_dict().items():
        parts = k.split(".")
        if start is not None and not (parts[0] == "model" and parts[1].isdigit() and int(parts[1]) >= start):
            continue
        tk = ".".join([parts[0], str(int(parts[1]) + shift), *parts[2:]]) if start is not None else k
        dims = found.get(k, [])
        dims = dims + [None] * (v.dim() - len(dims))
        t_shape = t_shapes.get(tk)
        if t_shape is None:
            return None, f"the teacher has no tensor '{tk}' for the student's '{k}'"
        for d, idx in enumerate(dims):
            if idx is None and v.shape[d] != t_shape[d]:
                return None, f"'{k}' is {tuple(v.shape)} in the student but {tuple(t_shape)} in the teacher"
        plan[k] = (tk, dims)
    return plan, None
