"""Each student YAML trains, validates, predicts and exports through stock Ultralytics calls, on generated data."""

from __future__ import annotations

import pytest
from ultralytics import YOLO
from ultralytics.utils import ASSETS

from ultralytics_kd.data import make_synthetic_dataset
from ultralytics_kd.nn.fuse import unfused_blocks


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n=12, imgsz=64, seed=0, test_frac=0.0)


@pytest.mark.slow
def test_student_train_val_predict_export(model_yaml, tiny_data, tmp_path):
    model = YOLO(str(model_yaml))
    model.train(
        data=str(tiny_data),
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        project=str(tmp_path),
        name="train",
        verbose=False,
    )
    best = tmp_path / "train" / "weights" / "best.pt"
    trained = YOLO(best)
    assert trained.model.yaml["backbone"] == model.model.yaml["backbone"]  # the checkpoint keeps the plugin rows
    metrics = trained.val(data=str(tiny_data), imgsz=64, batch=4, workers=0, plots=False)
    keys = ["metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)"]
    # the figures of the trainer's own final validation of best.pt
    assert [metrics.results_dict[k] for k in keys] == pytest.approx([model.trainer.metrics[k] for k in keys])
    results = trained.predict(ASSETS / "bus.jpg", imgsz=64, conf=0.0, max_det=5, verbose=False)
    assert len(results) == 1 and results[0].boxes.data.shape == (5, 6)  # conf=0: max_det boxes, xyxy conf cls
    served = trained.predictor.model.model  # the nn.Module inside the predictor's AutoBackend
    assert served.is_fused() and not unfused_blocks(served)  # predict fused it, plugin branches included
    onnx_file = YOLO(best).export(format="onnx", imgsz=64, simplify=True)
    assert str(onnx_file).endswith(".onnx")
