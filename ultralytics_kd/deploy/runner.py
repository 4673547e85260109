"""Small runners for exported detectors: a TensorRT engine on the GPU, or an ONNX file on ONNX Runtime.

Both share Ultralytics' own pre- and post-processing (``LetterBox``, ``nms.non_max_suppression``,
``ops.scale_boxes``, ``Results``), so ``runner.predict(images)`` returns what ``YOLO(file).predict(images)`` returns,
and ``runner(batch)`` returns the raw head outputs for parity checks and timing.

Why no pycuda: the engine runner allocates its buffers as torch CUDA tensors and enqueues on a torch CUDA stream.
torch already owns the device's primary context, so TensorRT runs in that one context; pycuda's ``autoinit`` would
create a second context, and every buffer would then need copying between pycuda and torch memory. ``data_ptr()`` of
a torch tensor is what ``IExecutionContext.set_tensor_address`` takes, and the buffers are allocated once, at load.

Examples:
    >>> from ultralytics_kd.deploy import EngineRunner, OnnxRunner
    >>> runner = OnnxRunner("best.onnx")  # CPU; EngineRunner("best.engine") on a GPU
    >>> results = runner.predict(["bus.jpg"], conf=0.25)  # list[ultralytics.engine.results.Results]
    >>> raw = runner(torch.rand(1, 3, *runner.imgsz))  # raw head outputs, (1, 4 + nc, anchors)
"""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.engine.results import Results
from ultralytics.utils import nms, ops

from ultralytics_kd.compat import engine_header
from ultralytics_kd.deploy.trt import precision_api, require_tensorrt

__all__ = ["EngineRunner", "OnnxRunner", "read_engine_header"]


def read_engine_header(path: str | Path) -> tuple[int, dict]:
    """Read an engine file's Ultralytics metadata header without TensorRT.

    Args:
        path (str | Path): A ``.engine`` file, with or without the header Ultralytics writes.

    Returns:
        (tuple[int, dict]): Byte offset of the serialized engine, and the metadata with ``imgsz``, ``names``, ``args``
            and the like parsed back from strings; ``(0, {})`` for a bare engine.

    Raises:
        FileNotFoundError: No such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"engine file {path} not found; build one: yolo-kd export model=best.pt format=engine")
    offset, meta = engine_header(path)
    return offset, _parse_metadata(meta)


def _parse_metadata(meta: dict) -> dict:
    """Ultralytics metadata as stored (strings in ONNX, JSON in engine headers) back to Python values, int class ids."""
    for k in ("imgsz", "names", "args", "stride", "batch", "end2end"):
        if isinstance(meta.get(k), str):
            meta[k] = ast.literal_eval(meta[k])
    if isinstance(meta.get("names"), dict):
        meta["names"] = {int(k): v for k, v in meta["names"].items()}
    return meta


class _Runner:
    """Shared pre/post-processing; subclasses set ``imgsz``, ``stride``, ``names``, ``batch``, ``dynamic``, ``end2end``,
    ``device``, ``dtype`` and implement ``forward``."""

    imgsz: tuple[int, int]
    stride: int = 32
    names: dict[int, str]
    batch: int | None = 1  # the largest batch one call takes; None for no limit
    dynamic: bool = False
    end2end: bool = False
    device: torch.device
    dtype: torch.dtype = torch.float32

    def check_input(self, im: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Validate a BCHW batch against the exported shape and dtype; return it on the runner's device and dtype."""
        if isinstance(im, np.ndarray):
            im = torch.from_numpy(im)
        if not isinstance(im, torch.Tensor):
            raise TypeError(f"expected a BCHW torch.Tensor or numpy array, got {type(im).__name__}")
        if im.ndim != 4 or im.shape[1] != 3:
            raise ValueError(f"expected a BCHW batch with 3 channels, got shape {tuple(im.shape)}")
        if not im.is_floating_point():
            raise TypeError(
                f"expected float pixels in [0, 1], got {im.dtype}; divide uint8 images by 255, or call predict() "
                "with images to letterbox and normalise them"
            )
        if not self.dynamic and tuple(im.shape[2:]) != tuple(self.imgsz):
            raise ValueError(
                f"input {tuple(im.shape[2:])} does not match the exported imgsz {tuple(self.imgsz)}; export again "
                f"with imgsz={list(im.shape[2:])} or dynamic=True, or use predict(), which letterboxes"
            )
        return im.to(self.device, self.dtype)

    def __call__(self, im: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """Raw head outputs for a BCHW batch of any size: batches larger than the export's (or its profile's) largest
        run in chunks."""
        im = self.check_input(im)
        n = im.shape[0]
        if n == self.batch or (self.dynamic and (self.batch is None or n <= self.batch)):
            return [y.clone() for y in self.forward(im)]
        chunks = []
        for i in range(0, im.shape[0], self.batch):
            part = im[i : i + self.batch]
            k = part.shape[0]
            if k < self.batch and not self.dynamic:  # pad the last chunk to the static batch, then drop the padding
                part = torch.cat([part, part.new_zeros((self.batch - k, *part.shape[1:]))])
            chunks.append([y[:k].clone() for y in self.forward(part)])
        return [torch.cat(ys) for ys in zip(*chunks)]

    def forward(self, im: torch.Tensor) -> list[torch.Tensor]:
        """Run the exported model on one batch of its own shape."""
        raise NotImplementedError

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """Letterbox BGR HWC images to the exported size and make a float RGB BCHW batch in [0, 1]."""
        letterbox = LetterBox(self.imgsz, auto=False, stride=self.stride)
        x = np.stack([letterbox(image=im) for im in images])[..., ::-1].transpose(0, 3, 1, 2)  # BGR->RGB, BHWC->BCHW
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255)

    def postprocess(
        self, preds, im: torch.Tensor, images: list[np.ndarray], paths: list[str], conf: float, iou: float, max_det: int
    ) -> list[Results]:
        """NMS, boxes scaled back to each original image, one ``Results`` per image."""
        pred = preds[0] if isinstance(preds, (list, tuple)) else preds
        dets = nms.non_max_suppression(pred.float(), conf, iou, max_det=max_det, end2end=self.end2end)
        out = []
        for det, orig, path in zip(dets, images, paths):
            det[:, :4] = ops.scale_boxes(im.shape[2:], det[:, :4], orig.shape)
            out.append(Results(orig, path=path, names=self.names, boxes=det[:, :6].cpu()))
        return out

    def predict(self, source, conf: float = 0.25, iou: float = 0.7, max_det: int = 300) -> list[Results]:
        """Detect objects in images (paths or BGR arrays); ``conf``, ``iou`` and ``max_det`` default as in Ultralytics.

        Returns:
            (list[Results]): One per image, as ``YOLO(file).predict(source)`` returns them.
        """
        source = source if isinstance(source, (list, tuple)) else [source]
        paths = [str(s) if isinstance(s, (str, Path)) else f"image{i}.jpg" for i, s in enumerate(source)]
        images = [cv2.imread(str(s)) if isinstance(s, (str, Path)) else s for s in source]
        for p, im in zip(paths, images):
            if im is None:
                raise FileNotFoundError(f"could not read image {p}")
        im = self.preprocess(images)
        return self.postprocess(self(im), im, images, paths, conf, iou, max_det)


class OnnxRunner(_Runner):
    """An ONNX export on ONNX Runtime (CPU unless ``providers`` says otherwise), with the metadata Ultralytics embeds.

    Args:
        path (str | Path): The ``.onnx`` file.
        providers (list[str], optional): ONNX Runtime execution providers; CPU by default.
        threads (int): Intra-op threads; 0 leaves ONNX Runtime's default.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} not found; export one: yolo-kd export model=best.pt format=onnx")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        meta = _parse_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.dynamic = not all(isinstance(d, int) for d in inp.shape)
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else None  # None: any batch size
        self.imgsz = tuple(meta.get("imgsz") or inp.shape[2:])
        self.stride = int(meta.get("stride", 32))
        self.names = meta.get("names") or {}
        self.end2end = bool(meta.get("end2end", False))
        self.dtype = torch.float16 if "float16" in inp.type else torch.float32
        self.device = torch.device("cpu")
        self.metadata = meta

    def forward(self, im: torch.Tensor) -> list[torch.Tensor]:
        """Run ONNX Runtime on one batch."""
        ys = self.session.run(self.output_names, {self.input_name: im.numpy()})
        return [torch.from_numpy(y) for y in ys]


class EngineRunner(_Runner):
    """A serialized TensorRT engine (Ultralytics' ``.engine`` with its header, or a bare one) on one CUDA device.

    Loads once, allocates the input and output buffers once as torch CUDA tensors, and enqueues on a torch stream in
    torch's own CUDA context (see the module docstring for why not pycuda). Calls copy the input into the bound
    buffer, so thousands of calls allocate nothing new on the device.

    Args:
        path (str | Path): The engine file.
        device (int | str | torch.device): CUDA device the engine was built for.
        metadata (dict, optional): ``names``, ``imgsz``, ``stride`` for a bare engine without Ultralytics' header.

    Raises:
        FileNotFoundError: No such file.
        ImportError: ``tensorrt`` is not installed.
        RuntimeError: No CUDA device; the engine was built with another TensorRT version or for another GPU; or it
            does not deserialize.
    """

    def __init__(self, path: str | Path, device: int | str | torch.device = 0, metadata: dict | None = None):
        offset, meta = read_engine_header(path)
        meta = {**meta, **(metadata or {})}
        trt = require_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("EngineRunner needs a CUDA device and none is visible to torch; use OnnxRunner on CPU")
        self.device = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
        self.check_built_here(meta, trt.__version__)
        if not precision_api(trt.__version__)["runner"]:
            raise RuntimeError(f"TensorRT {trt.__version__} lacks the named-tensor API; install TensorRT >= 8.5")

        logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f, torch.cuda.device(self.device):
            f.seek(offset)
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
            if self.engine is None:
                raise RuntimeError(
                    f"TensorRT {trt.__version__} could not deserialize {path}: engines only run with the TensorRT "
                    "version and GPU they were built with; rebuild it on this machine with: "
                    "yolo-kd export model=best.pt format=engine"
                )
            self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)

        self._storage: dict[str, torch.Tensor] = {}  # flat, sized for the largest shape; buffers are views of it
        self.buffers: dict[str, torch.Tensor] = {}
        self.output_names = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.input_name, self.dtype = name, dtype
                shape = tuple(self.engine.get_tensor_shape(name))
                self.dynamic = -1 in shape
                if self.dynamic:  # allocate for the profile's largest shape, once
                    shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])
                    self.context.set_input_shape(name, shape)
                self.max_shape = shape
            else:
                self.output_names.append(name)
            shape = tuple(self.context.get_tensor_shape(name))
            self._storage[name] = torch.empty(int(np.prod(shape)), dtype=dtype, device=self.device)
            self.buffers[name] = self._storage[name].view(shape)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.batch = self.max_shape[0]
        self.imgsz = tuple(meta.get("imgsz") or self.max_shape[2:])
        self.stride = int(meta.get("stride", 32))
        self.names = meta.get("names") or {}
        self.end2end = bool(meta.get("end2end", False))
        self.metadata = meta

    def check_built_here(self, meta: dict, trt_version: str) -> None:
        """Refuse an engine whose header says it was built with another TensorRT version or for another GPU."""
        problems = []
        built = meta.get("tensorrt")
        if built and built != trt_version:
            problems.append(f"TensorRT {built} (installed: {trt_version})")
        cc = meta.get("compute_capability")
        here = "{}.{}".format(*torch.cuda.get_device_capability(self.device))
        if cc and cc != here:
            problems.append(f"a GPU of compute capability {cc} ({meta.get('gpu', '?')}; this one: {here})")
        if problems:
            raise RuntimeError(
                f"this engine was built with {' and for '.join(problems)}; engines are not portable across TensorRT "
                "versions or GPUs: rebuild it here with yolo-kd export model=best.pt format=engine"
            )

    def forward(self, im: torch.Tensor) -> list[torch.Tensor]:
        """Run the engine on one batch; the outputs are the bound buffers (cloned by ``__call__``)."""
        if self.dynamic:
            if any(s > m for s, m in zip(im.shape, self.max_shape)):
                raise ValueError(f"input {tuple(im.shape)} exceeds the engine's largest profile shape {self.max_shape}")
            if tuple(im.shape) != tuple(self.buffers[self.input_name].shape):
                self.context.set_input_shape(self.input_name, tuple(im.shape))
                for name in (self.input_name, *self.output_names):  # views into the storage allocated at load
                    shape = tuple(im.shape) if name == self.input_name else tuple(self.context.get_tensor_shape(name))
                    self.buffers[name] = self._storage[name][: int(np.prod(shape))].view(shape)
                    self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the input may still be in flight
        with torch.cuda.stream(self.stream):
            self.buffers[self.input_name].copy_(im, non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return [self.buffers[n] for n in self.output_names]
