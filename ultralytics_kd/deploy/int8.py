"""INT8 through Ultralytics' own two paths, with checks first and one preparation step for plugin students.

- **Post-training (PTQ)**: ``model.export(format="onnx", quantize=8, data=...)`` calibrates with ONNX Runtime's
  ``quantize_static``. The plugin adds :func:`export_preflight`: without ``data=`` the stock path would download a
  sample set to calibrate on, so a model that is not QAT-trained fails first with the fix in the message. For a plugin
  student (a model holding a registered block) it also widens what is quantized (:func:`onnx_int8_quantize`): the
  stock step quantizes only Conv, Gemm and MatMul nodes, leaving every conv's output float, and ONNX Runtime runs a
  conv in INT8 only when its output is quantized too (the DQ -> Conv -> Q pattern it fuses into QLinearConv);
  otherwise it dequantizes and runs the float conv, so the INT8 file ran slower than FP32 on CPU. The plugin quantizes
  the whole body, activations and concatenations included, and keeps float exactly what Ultralytics' QAT keeps float:
  the Detect layer outside its Conv blocks (the output convs and the box/score decode, whose pixel and probability
  ranges one INT8 scale cannot hold). Unpadded average pools (ADown's 2x2, stride 1, in YOLOv9-style students) are
  first rewritten as the depthwise convs they equal (:func:`average_pools_as_convs`): ONNX Runtime's
  QLinearAveragePool was among the RepGELAN student's costliest INT8 kernels; its QLinearConv is fast. Every other
  model, stock YOLO11 with its C2PSA attention included, is quantized by Ultralytics' own step, unchanged: the
  exporter's wrapper says per export whose model it is (:func:`export_scope`), and the hook reads only that.
- **Quantization-aware training (QAT)**: ``train(quantize=8)`` inserts NVIDIA ModelOpt fake-quantization through
  ``prepare_qat``, which Ultralytics' trainer calls after building the model. :func:`install_int8_hooks` wraps that call
  (stock trainers and ``KDTrainer`` alike) with :func:`prepare_qat`:

  1. ModelOpt missing: an ImportError naming the install, instead of an AutoInstall mid-run.
  2. A student whose BatchNorm statistics were never trained: an error. QAT calibrates its ranges in eval mode, where
     such a model's activations shrink to ~1e-6 while training sees normalised ones; the ranges then clip everything
     and the first step turns the weights to NaN (stock ``yolov9t.yaml`` does this too).
  3. Re-parameterisable blocks (RepVGG, RepGELAN) are merged first, so QAT learns the weights and ranges of the single
     conv that deploys. Merging after QAT would add branches that were quantized apart, whose sum no INT8 kernel
     reproduces (Chu et al., "Make RepVGG Greater Again: A Quantization-aware Approach", 2022).
  4. The stock preparation.
  5. A module whose weights ModelOpt did not wrap (a block computing with its own ``nn.Parameter``) is named in an
     error: it would train and export in float while the run reports INT8.

Examples:
    >>> from ultralytics import YOLO
    >>> import ultralytics_kd  # installs the hooks
    >>> YOLO("best.pt").export(format="onnx", quantize=8, data="data.yaml")  # PTQ, ONNX Runtime
    >>> from ultralytics_kd import KDTrainer
    >>> YOLO("best.pt").train(trainer=KDTrainer, teacher="teacher.pt", data="data.yaml", quantize=8, epochs=10)
"""

from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import nn
from ultralytics.utils import LOGGER, colorstr

from ultralytics_kd.compat import has, is_qat, onnx_int8_step
from ultralytics_kd.nn.fuse import reparameterize, unfused_blocks
from ultralytics_kd.nn.registry import registered_blocks

__all__ = [
    "MODELOPT_HINT",
    "average_pools_as_convs",
    "check_qat_start",
    "export_preflight",
    "export_scope",
    "float_nodes",
    "freeze_batchnorm",
    "install_int8_hooks",
    "is_int8",
    "onnx_int8_quantize",
    "prepare_qat",
    "qat_fine_tune",
    "require_modelopt",
    "unquantized_modules",
]

PREFIX = colorstr("INT8:")
MODELOPT_HINT = 'pip install "ultralytics-kd[int8]"'
UNPADDED = (b"NOTSET", b"VALID")  # ONNX auto_pad values that, with no explicit pads, pad nothing
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
# set by export_scope for the length of one export (per thread and task), read by the INT8 hook
_PLUGIN_EXPORT: ContextVar[bool] = ContextVar("ultralytics_kd_plugin_export", default=False)


def is_int8(quantize) -> bool:
    """Whether a ``quantize`` value asks for INT8 (8, "8", "int8", "w8a8"), before or after Ultralytics' aliasing."""
    return str(quantize).strip().lower() in {"8", "int8", "w8a8"}


def require_modelopt():
    """Import ``modelopt.torch.quantization``, or raise an ImportError that names the install."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise ImportError(
            f"quantize=8 training (QAT) needs NVIDIA ModelOpt, which is not installed: {MODELOPT_HINT} (it runs on "
            f"CPU too). For INT8 without training, export with format=onnx quantize=8 data=your_data.yaml"
        ) from e
    return mtq


def _untrained_batchnorms(model: nn.Module) -> bool:
    """True if every BatchNorm still holds its initial statistics (mean 0, variance 1): a never-trained model."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None]
    return bool(bns) and all(
        torch.all(m.running_mean == 0).item() and torch.all(m.running_var == 1).item() for m in bns
    )


def unquantized_modules(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, type)`` of modules that hold weights of their own but no ModelOpt weight quantizer (norms aside)."""
    return [
        (name, type(m).__name__)
        for name, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
        and not hasattr(m, "weight_quantizer")
        and not isinstance(m, _NORMS)
        and type(m).__name__ != "TensorQuantizer"
    ]


def prepare_qat(stock, model: nn.Module, dataloader, preprocess, batches: int = 8) -> nn.Module:
    """Check and prepare a student, then run Ultralytics' ``prepare_qat`` (``stock``) on it; see the module docstring.

    Args:
        stock (Callable): ``ultralytics.utils.torch_utils.prepare_qat``.
        model (nn.Module): The student, modified in place.
        dataloader (Iterable): The calibration loader the trainer built (its train split, without augmentation cache).
        preprocess (Callable): The trainer's batch preprocessing.
        batches (int): Calibration batches.

    Returns:
        (nn.Module): The fake-quantized student.

    Raises:
        ImportError: ModelOpt is not installed.
        ValueError: The student was never trained, or has weights that ModelOpt does not quantize.
    """
    require_modelopt()
    if _untrained_batchnorms(model):
        raise ValueError(
            "quantize=8 fine-tunes a trained student, and this one has never been trained (its BatchNorm statistics "
            "are the initial ones, so the calibrated INT8 ranges would clip every activation). Train it in FP32 first, "
            "then fine-tune: yolo-kd train model=runs/detect/train/weights/best.pt data=... quantize=8 epochs=10"
        )
    n_images = len(getattr(dataloader, "dataset", ()))
    if len(dataloader) < batches:
        LOGGER.warning(
            f"{PREFIX} the calibration set has {n_images} images, {len(dataloader)} batches of the {batches} that "
            f"QAT calibrates its ranges on; ranges from so few images may clip. Use more training images"
        )
    merged = len(unfused_blocks(model))
    reparameterize(model)
    model = stock(model, dataloader, preprocess, batches)
    if bad := unquantized_modules(model):
        names = ", ".join(f"{n} ({t})" for n, t in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"quantize=8: ModelOpt does not quantize {names}: it holds weights outside nn.Conv2d/nn.Linear layers, so "
            f"it would stay float. Build the block from nn.Conv2d/nn.Linear, or register a ModelOpt quant module for it"
        )
    if merged:
        LOGGER.info(f"{PREFIX} QAT on the deployed form: {merged} re-parameterisable blocks merged before quantizing")
    return model


def export_preflight(args, model: nn.Module | None) -> None:
    """Refuse an INT8 ONNX export that would calibrate on a downloaded sample set; a QAT model needs no data.

    Raises:
        ValueError: ``format=onnx quantize=8`` without ``data=`` for a model that carries no QAT ranges.
    """
    fmt = str(getattr(args, "format", "")).lower()
    if fmt != "onnx" or not is_int8(getattr(args, "quantize", None)) or getattr(args, "data", None):
        return
    if model is not None and is_qat(model):
        return
    raise ValueError(
        "format=onnx quantize=8 calibrates INT8 ranges on your images: pass data=your_data.yaml (its val split is "
        "used). The stock fallback would download a sample set, which this plugin does not allow. A model trained with "
        "quantize=8 (QAT) carries its ranges and needs no data"
    )


def float_nodes(graph) -> list[str] | None:
    """ONNX nodes that PTQ keeps float: those outside the model's layers (e.g. NMS) and, in the last layer (the head),
    those outside its ``Conv`` blocks; None when the node names do not follow Ultralytics' ``/model.N/...`` export.

    Args:
        graph (onnx.GraphProto): The FP32 graph as Ultralytics exports it.
    """
    layers = [n.name.split("/")[1] for n in graph.node if n.name.startswith("/model.")]
    if not layers:
        return None
    head = f"/model.{max(int(x.removeprefix('model.')) for x in layers if x.removeprefix('model.').isdigit())}/"
    return [
        n.name
        for n in graph.node
        if not n.name.startswith("/model.")
        or (n.name.startswith(head) and ("/dfl/" in n.name or ("/conv/" not in n.name and "/act/" not in n.name)))
    ]


def average_pools_as_convs(model) -> int:
    """Rewrite each unpadded ``AveragePool`` of an ONNX model as the depthwise ``Conv`` it equals, in place.

    A k x k average without padding is a depthwise conv whose weights are all 1 / (k * k): the outputs are the same in
    float (the FP32 file is unchanged; only the graph handed to the quantizer is rewritten). Pools with padding or
    ``ceil_mode``, or whose channel count shape inference cannot tell, are left alone.

    Args:
        model (onnx.ModelProto): The FP32 model; modified in place.

    Returns:
        (int): Number of pools rewritten.
    """
    import numpy as np
    from onnx import helper, numpy_helper, shape_inference

    graph = shape_inference.infer_shapes(model).graph
    channels = {
        v.name: v.type.tensor_type.shape.dim[1].dim_value
        for v in [*graph.value_info, *graph.input]
        if len(v.type.tensor_type.shape.dim) == 4
    }
    done = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type != "AveragePool" or not (c := channels.get(node.input[0], 0)):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if any(attrs.get("pads", [])) or attrs.get("ceil_mode", 0) or attrs.get("auto_pad", b"NOTSET") not in UNPADDED:
            continue
        k = list(attrs["kernel_shape"])
        weight = numpy_helper.from_array(np.full((c, 1, *k), 1.0 / np.prod(k), np.float32), f"{node.name}/weight")
        model.graph.initializer.append(weight)
        conv = helper.make_node(
            "Conv", [node.input[0], weight.name], list(node.output), name=f"{node.name}/as_conv", group=c,
            kernel_shape=k, strides=list(attrs.get("strides", [1] * len(k))),
        )  # fmt: skip
        model.graph.node.remove(node)
        model.graph.node.insert(i, conv)
        done += 1
    return done


def onnx_int8_quantize(
    stock, onnx_file, output_file, dataset, transform_fn, input_name: str = "images", prefix: str = ""
) -> str:
    """Ultralytics' static INT8 ONNX quantization (same tool, calibration and format), over the whole body.

    What a plugin student's export runs (see :func:`export_scope`). Falls back to ``stock`` for a graph whose node
    names :func:`float_nodes` cannot read. See the module docstring.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from ultralytics.utils.export.onnx import onnx_calibration_reader

    model = onnx.load(str(onnx_file))
    exclude = float_nodes(model.graph)
    if exclude is None:
        return stock(onnx_file, output_file, dataset, transform_fn, input_name=input_name, prefix=prefix)
    LOGGER.info(f"{prefix} quantizing INT8 with ONNX Runtime: the whole body; {len(exclude)} head nodes stay float")
    source = Path(output_file).with_suffix(".pools.onnx")  # the rewritten FP32 graph, removed after quantizing
    if pools := average_pools_as_convs(model):
        LOGGER.info(f"{prefix} {pools} average pools quantize as the depthwise convs they equal")
        onnx.save(model, str(source))
    try:
        quantize_static(
            str(source if pools else onnx_file),
            str(output_file),
            onnx_calibration_reader(dataset, transform_fn, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
    finally:
        if pools:
            source.unlink(missing_ok=True)
    return str(output_file)


@contextlib.contextmanager
def export_scope(model: nn.Module | None):
    """Within this block, the INT8 ONNX step widens its scope if ``model`` (the one being exported) is a plugin student.

    ``Exporter.__call__`` (wrapped in :mod:`ultralytics_kd.deploy.trt`) is where the exported model is known; the
    INT8 step that Ultralytics calls deeper down is only handed file names, so the wrapper says it here.
    """
    token = _PLUGIN_EXPORT.set(model is not None and bool(registered_blocks(model)))
    try:
        yield
    finally:
        _PLUGIN_EXPORT.reset(token)


def _int8_step(stock, *args, **kwargs) -> str:
    """The exporter's INT8 ONNX step: the plugin's for a plugin student's export, Ultralytics' own for any other."""
    if _PLUGIN_EXPORT.get():
        return onnx_int8_quantize(stock, *args, **kwargs)
    return stock(*args, **kwargs)


def install_int8_hooks() -> None:
    """Wrap, once, the ``prepare_qat`` that Ultralytics' trainer calls and the ONNX INT8 step its exporter imports
    (which stays Ultralytics' own unless :func:`export_scope` says a plugin student is being exported)."""
    from ultralytics.engine import trainer
    from ultralytics.utils.export import onnx as onnx_export

    if has("qat") and not getattr(trainer.prepare_qat, "_ultralytics_kd", False):  # nothing to hook without stock QAT
        hooked = functools.wraps(trainer.prepare_qat)(functools.partial(prepare_qat, trainer.prepare_qat))
        hooked._ultralytics_kd = True
        trainer.prepare_qat = hooked
    if not getattr(onnx_export.onnx_int8_quantize, "_ultralytics_kd", False):
        stock = onnx_export.onnx_int8_quantize
        hooked = functools.wraps(stock)(functools.partial(onnx_int8_step(_int8_step), stock))
        hooked._ultralytics_kd = True
        onnx_export.onnx_int8_quantize = hooked


def qat_fine_tune(args, given: dict) -> float | None:
    """Settings of a QAT fine-tune (``quantize=8``) that the user did not set; return the factor for the optimizer's lr.

    QAT fine-tunes a trained student for a few epochs. The stock schedule would restart at lr0 with a warm-up (bias lr
    0.1), which throws a converged student far off before its INT8 ranges matter; QAT recipes instead hold the learning
    rate the float training ended at. So, unless given: no warm-up, a constant rate (``lrf=1``), and that rate is the
    end of the stock schedule, the optimizer's own lr times the default ``lrf`` (applied by the trainer's
    ``build_optimizer``, after ``optimizer=auto`` picked its optimizer and lr).

    Args:
        args: The trainer's args; changed in place.
        given (dict): The train arguments the user gave.

    Returns:
        (float | None): The factor for every parameter group's lr, or None (not QAT, or lr0/lrf given).
    """
    if not is_int8(args.quantize):
        return None
    scale = None if "lr0" in given or "lrf" in given else float(args.lrf)
    changed = []
    if "warmup_epochs" not in given:
        args.warmup_epochs = 0
        changed.append("warmup_epochs=0")
    if "lrf" not in given:
        args.lrf = 1.0
        changed.append("lrf=1")
    if scale:
        changed.append(f"the optimizer's lr x {scale:g}")
    if changed:
        LOGGER.info(
            f"{PREFIX} quantize=8 fine-tunes a trained student at the rate a stock run ends with: "
            + ", ".join(changed)
            + " (set lr0, lrf or warmup_epochs to choose yourself)"
        )
    return scale


def check_qat_start(quantize, has_stage: bool) -> None:
    """Refuse QAT for a student that would start with a mimic stage: QAT fine-tunes a trained student."""
    if has_stage and is_int8(quantize):
        raise ValueError(
            "quantize=8 fine-tunes a trained student, and this one would start with a mimic stage (it has no "
            "weights of its own). Distil it in FP32 first, then fine-tune with the teacher: yolo-kd train "
            "model=runs/detect/train/weights/best.pt teacher=... data=... quantize=8 epochs=10"
        )


def freeze_batchnorm(model: nn.Module, quantize) -> None:
    """Under QAT (``quantize=8``) BatchNorm keeps the statistics its INT8 ranges were calibrated with, as QAT recipes
    do: the fine-tune is short, and a batch's statistics would shift the calibrated ranges."""
    if is_int8(quantize):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
