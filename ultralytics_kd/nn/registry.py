"""Register plugin blocks by name so that any Ultralytics model YAML can use them.

Ultralytics' ``parse_model`` resolves a YAML row's module name in the globals of ``ultralytics.nn.tasks`` and does the
channel bookkeeping (``width_multiple``, ``depth_multiple``, ``scales``, ``max_channels``, ``make_divisible``) only for
the stock classes it knows. Rather than copy that function, the hook below rewrites each row that names a registered
block into a *stand-in* stock row with the same bookkeeping (``Conv`` for ``[c2, *args]`` rows, ``C2f`` for rows that
also take a depth-scaled repeat count), lets the stock parser build the model, and swaps each stand-in for the real
block built from the channels the parser computed. New stock blocks in a later Ultralytics release keep working, since
every row that is not ours goes through the stock parser untouched.

Examples:
    >>> import torch.nn as nn
    >>> from ultralytics_kd import register_block
    >>> @register_block("MyBlock")
    ... class MyBlock(nn.Module):
    ...     def __init__(self, c1: int, c2: int, k: int = 3):
    ...         super().__init__()
    ...         self.conv = nn.Conv2d(c1, c2, k, padding=k // 2)
    ...
    ...     def forward(self, x):
    ...         return self.conv(x)
    >>> # a model YAML row `- [-1, 1, MyBlock, [64, 5]]` now builds MyBlock(c1, make_divisible(64 * width, 8), 5)
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.nn import tasks
from ultralytics.utils import LOGGER

__all__ = ["REGISTRY", "BlockSpec", "install", "register_block", "registered_blocks"]


@dataclass(frozen=True)
class BlockSpec:
    """How a registered block is built from a YAML row.

    Attributes:
        name (str): Name used in the YAML ``module`` column.
        cls (type[nn.Module]): The block class, called as ``cls(c1, c2, *args)`` or ``cls(c1, c2, n, *args)``.
        repeats (bool): Whether the block takes a depth-scaled repeat count ``n`` as its third argument.
    """

    name: str
    cls: type
    repeats: bool = False

    @property
    def stand_in(self) -> str:
        """Name of the stock module whose bookkeeping matches this block's row layout."""
        return "C2f" if self.repeats else "Conv"


REGISTRY: dict[str, BlockSpec] = {}
_lock = threading.Lock()


def register_block(name: str | None = None, *, repeats: bool = False, override: bool = False):
    """Class decorator that makes an ``nn.Module`` usable by name in Ultralytics model YAMLs.

    The block is built as ``cls(c1, c2, *args)`` where ``c1`` is the input channel count, ``c2`` the row's first
    argument scaled like a stock ``Conv`` row (``make_divisible(min(c2, max_channels) * width, 8)``), and ``args`` the
    rest of the row. With ``repeats=True`` the YAML ``n`` column is depth-scaled like a stock ``C2f`` row and passed as
    the third argument: ``cls(c1, c2, n, *args)``. A block reads one input (``from`` is a single index).

    Args:
        name (str, optional): YAML name; defaults to the class name.
        repeats (bool): Pass the depth-scaled repeat count as the third constructor argument.
        override (bool): Allow the name to shadow a stock Ultralytics module or a block registered earlier.

    Returns:
        (Callable): The decorator, which returns the class unchanged.

    Raises:
        ValueError: If the name clashes with a stock module or another registered block and ``override`` is False.
    """

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_block expects an nn.Module subclass, got {cls!r}")
        key = name or cls.__name__
        with _lock:
            old = REGISTRY.get(key)
            same = old is not None and (old.cls.__module__, old.cls.__qualname__) == (cls.__module__, cls.__qualname__)
            if not override and not same:
                if key in vars(tasks) or key.startswith(("nn.", "torchvision.")):
                    raise ValueError(
                        f"register_block: '{key}' is already a stock Ultralytics module. Pick another name, or pass "
                        f"override=True to make YAML rows named '{key}' build {cls.__qualname__} instead."
                    )
                if old is not None:
                    raise ValueError(
                        f"register_block: '{key}' is already registered to {old.cls.__module__}.{old.cls.__qualname__}."
                        " Pick another name or pass override=True."
                    )
            REGISTRY[key] = BlockSpec(key, cls, repeats)
        _allow_safe_load(cls)
        return cls

    return decorator


def registered_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` built from a registered block (the plugin's or a user's); empty for a stock model."""
    classes = tuple(spec.cls for spec in REGISTRY.values())
    return [m for m in model.modules() if isinstance(m, classes)]


def _allow_safe_load(cls: type) -> None:
    """Let checkpoints holding this block load under Ultralytics' restricted (weights_only) loading."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list; restricted loading is then a plain load anyway
        add([cls])


def _known_stock(name: str) -> bool:
    """Whether the stock parser can resolve this module name by itself."""
    return name in vars(tasks) or name.startswith(("nn.", "torchvision.ops."))


def _row_error(i: int, row: list, problem: str) -> ValueError:
    """Build an error that names the YAML row and lists what is registered."""
    names = ", ".join(sorted(REGISTRY)) or "none"
    return ValueError(f"model YAML row {i} {row}: {problem}\nRegistered ultralytics_kd blocks: {names}.")


def _rewrite_rows(d: dict) -> dict[int, tuple[BlockSpec, list]]:
    """Replace rows naming registered blocks with stand-in stock rows, in place.

    Returns:
        (dict[int, tuple[BlockSpec, list]]): Layer index -> (spec, the row's arguments after ``c2``).
    """
    swaps = {}
    for i, row in enumerate(d["backbone"] + d["head"]):
        f, n, m, args = row
        spec = REGISTRY.get(m)
        if spec is None:
            if not _known_stock(m):
                raise _row_error(
                    i,
                    row,
                    f"unknown module '{m}'. Register it with ultralytics_kd.register_block, or "
                    "`import ultralytics_kd` before building the model (the CLI `yolo-kd` does this).",
                )
            continue
        if not isinstance(f, int):
            raise _row_error(i, row, f"'{m}' takes a single input; 'from' must be one layer index, got {f}.")
        if not args or not isinstance(args[0], (int, float)):
            raise _row_error(
                i, row, f"'{m}' expects its output channels as the first argument, e.g. [{f}, {n}, {m}, [64]]."
            )
        swaps[i] = (spec, list(args[1:]))
        row[2], row[3] = spec.stand_in, [args[0]]
    return swaps


def _standin_shape(module: nn.Module, spec: BlockSpec) -> tuple[int, int, int]:
    """Read (c1, c2, n) back from the stock stand-in that the parser built."""
    if spec.repeats:  # C2f(c1, c2, n)
        return module.cv1.conv.in_channels, module.cv2.conv.out_channels, len(module.m)
    convs = list(module) if isinstance(module, nn.Sequential) else [module]  # Conv, or n Convs if the row repeats
    return convs[0].conv.in_channels, convs[0].conv.out_channels, len(convs)


def _build(spec: BlockSpec, i: int, c1: int, c2: int, n: int, args: list, row: list) -> nn.Module:
    """Build the real block for layer ``i``, naming the row if its arguments do not fit."""
    try:
        if spec.repeats:
            return spec.cls(c1, c2, n, *args)
        blocks = [spec.cls(c1, c2, *args) for _ in range(n)]
        return nn.Sequential(*blocks) if n > 1 else blocks[0]
    except Exception as e:  # the block's own error, re-raised with the row that caused it
        raise _row_error(
            i,
            row,
            f"{spec.cls.__name__}({c1}, {c2}{f', {n}' if spec.repeats else ''}, *{args}) "
            f"failed: {type(e).__name__}: {e}",
        ) from e


def _log_table(model: nn.Sequential, rows: list) -> None:
    """Log the per-layer table for a model holding plugin blocks (the stock one was printed with stand-ins)."""
    LOGGER.info(f"\n{'':>3}{'from':>20}{'n':>3}{'params':>10}  {'module':<45}{'arguments':<30}")
    for m, (f, n, _, args) in zip(model, rows):
        LOGGER.info(f"{m.i:>3}{f!s:>20}{n:>3}{m.np:10.0f}  {m.type:<45}{args!s:<30}")


def _parse_model(parse, d, ch, verbose=True):
    """Stock ``parse_model`` with registered blocks built through stand-in rows (see module docstring)."""
    rows = [list(r) for r in d["backbone"] + d["head"]]  # the YAML as written, for messages and the table
    swaps = _rewrite_rows(d)
    if not swaps:
        return parse(d, ch, verbose=verbose)
    model, save = parse(d, ch, verbose=False)
    for i, (spec, args) in swaps.items():
        c1, c2, n = _standin_shape(model[i], spec)
        block = _build(spec, i, c1, c2, n, args, rows[i])
        block.i, block.f, block.type = i, model[i].f, spec.name
        block.np = sum(p.numel() for p in block.parameters())
        model[i] = block
    if verbose:
        _log_table(model, rows)
    return model, save


def install() -> None:
    """Hook the registry and the fusion step into Ultralytics; idempotent, run on ``import ultralytics_kd``."""
    from ultralytics_kd.deploy.int8 import install_int8_hooks
    from ultralytics_kd.deploy.trt import install_export_hook
    from ultralytics_kd.nn import blocks  # noqa: F401  (registers the plugin's own blocks)
    from ultralytics_kd.nn.fuse import install_fuse_hook

    if not getattr(tasks.parse_model, "_ultralytics_kd", False):
        hooked = functools.wraps(tasks.parse_model)(functools.partial(_parse_model, tasks.parse_model))
        hooked._ultralytics_kd = True
        tasks.parse_model = hooked
    install_fuse_hook()
    install_export_hook()
    install_int8_hooks()
