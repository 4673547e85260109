"""INT8 through Ultralytics' own two paths, with checks first and one preparation step for plugin students.

- **Post-training (PTQ)**: ``model.export(format="onnx", quantize=8, data=...)`` calibrates with ONNX Runtime's
  ``quantize_static``. The plugin adds :func:`export_preflight`: without ``data=`` the stock path would download a
  sample set to calibrate on, so a model that is not QAT-trained fails first with the fix in the message. It also
  widens what is quantized (:func:`onnx_int8_quantize`): the stock step quantizes only Conv nodes, leaving every conv's
  output float, and ONNX Runtime runs a conv in INT8 only when its output is quantized too (the DQ -> Conv -> Q pattern
  it fuses into QLinearConv); otherwise it dequantizes and runs the float conv, so the INT8 file ran slower than FP32
  on CPU. The plugin quantizes the whole body, activations and concatenations included, and keeps float exactly what
  Ultralytics' QAT keeps float: the Detect layer outside its Conv blocks (the output convs and the box/score decode,
  whose pixel and probability ranges one INT8 scale cannot hold). Unpadded average pools (ADown's 2x2, stride 1, in
  YOLOv9-style students) are first rewritten as the depthwise convs they equal (:func:`average_pools_as_convs`):
  ONNX Runtime's QLinearAveragePool was among the RepGELAN student's costliest INT8 kernels; its QLinearConv is fast.
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

import functools
from pathlib import Path

import torch
from torch import nn
from ultralytics.utils import LOGGER, colorstr

from ultralytics_kd.compat import has, is_qat, onnx_int8_step
from ultralytics_kd.nn.fuse import reparameterize, unfused_blocks

__all__ = [
    "MODELOPT_HINT",
    "average_pools_as_convs",
    "export_preflight",
    "float_nodes",
    "install_int8_hooks",
    "is_int8",
    "onnx_int8_quantize",
    "prepare_qat",
    "require_modelopt",
    "unquantized_modules",
]

PREFIX = colorstr("INT8:")
MODELOPT_HINT = 'pip install "ultralytics-kd[int8]"'
UNPADDED = (b"NOTSET", b"VALID")  # ONNX auto_pad values that, with no explicit pads, pad nothing
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


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

    Falls back to ``stock`` for a graph whose node names :func:`float_nodes` cannot read. See the module docstring.
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


def install_int8_hooks() -> None:
    """Wrap, once, the ``prepare_qat`` that Ultralytics' trainer calls and the ONNX INT8 step its exporter imports."""
    from ultralytics.engine import trainer
    from ultralytics.utils.export import onnx as onnx_export

    if has("qat") and not getattr(trainer.prepare_qat, "_ultralytics_kd", False):  # nothing to hook without stock QAT
        hooked = functools.wraps(trainer.prepare_qat)(functools.partial(prepare_qat, trainer.prepare_qat))
        hooked._ultralytics_kd = True
        trainer.prepare_qat = hooked
    if not getattr(onnx_export.onnx_int8_quantize, "_ultralytics_kd", False):
        stock = onnx_export.onnx_int8_quantize
        hooked = functools.wraps(stock)(functools.partial(onnx_int8_step(onnx_int8_quantize), stock))
        hooked._ultralytics_kd = True
        onnx_export.onnx_int8_quantize = hooked
