"""KDTrainer under Ultralytics DDP, for real: two gloo processes on CPU, launched by the stock ``train()``.

Everything but device selection is stock: ``BaseTrainer.train`` writes the DDP file (``generate_ddp_file`` pickles the
trainer class, ``vars(args)``, the model and the callbacks), ``torch.distributed.run`` starts two workers that rebuild
the trainer from them, and each trains with the stock DDP wrap, sharded dataloaders, distributed validation and rank-0
checkpoints. Ultralytics' DDP asks for CUDA, so ``CpuDDPTrainer`` swaps in the CPU and gloo where it picks a device.
Each rank gets its own device identity, ``cpu:RANK`` (as ``cuda:LOCAL_RANK`` on GPUs; CPU tensors ignore the index),
so that the test can tell which rank's device the teacher was sent to.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import distributed as dist
from ultralytics import YOLO
from ultralytics.utils import DEFAULT_CFG_DICT, LOCAL_RANK, RANK, callbacks
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_kd import KDTrainer
from ultralytics_kd.engine.callbacks import _write_report


class _CpuDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP for CPU modules, which take no ``device_ids`` (the stock wrap passes ``[device.index]``, ``[None]`` here)."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module, **kwargs)


class CpuDDPTrainer(KDTrainer):
    """KDTrainer with DDP on two CPU processes; records what each rank saw for the test to compare."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.world_size = 2  # what device='0,1' gives; device='cpu' gives 0
        self.ddp = LOCAL_RANK == -1  # the stock rule: launch workers unless this is one
        self.kd_steps, self.teacher_moves = [], []

    def _setup_ddp(self):
        """Stock: cuda:LOCAL_RANK and NCCL. Here: cpu:RANK, gloo, and the CUDA-only picks pointed at the CPU."""
        from ultralytics.engine import validator

        self.device = torch.device("cpu", RANK)
        dist.init_process_group("gloo", rank=RANK, world_size=self.world_size)
        torch.nn.parallel.DistributedDataParallel = _CpuDDP
        backend = validator.AutoBackend  # a DDP rank validates a model file on torch.device('cuda', current_device())
        validator.get_torch_device_backend = lambda _: SimpleNamespace(current_device=lambda: 0)
        validator.AutoBackend = lambda *args, device=None, **kwargs: backend(*args, device=self.device, **kwargs)

    def _setup_train(self):
        move = self.teacher.to

        def recorded(*args, **kwargs):  # every device (or dtype) the teacher is sent to, as given
            self.teacher_moves.append(str(args[0] if args else kwargs))
            return move(*args, **kwargs)

        self.teacher.to = recorded
        super()._setup_train()

    def optimizer_step(self):
        self.kd_steps.append({k: float(v) for k, v in self.loss_items.items() if k.startswith(("kd", "u"))})
        super().optimizer_step()

    def _do_train(self):
        super()._do_train()
        torch.save(
            {
                "kd_steps": self.kd_steps,
                "student": {k: v.detach().cpu() for k, v in unwrap_model(self.model).named_parameters()},
                "adapters": {k: v.detach().cpu() for k, v in self.kd_connectors.named_parameters()},
                "report_callbacks": self.callbacks["on_train_end"].count(_write_report),
                "teacher_moves": self.teacher_moves,
                "start": self.kd_start.mode,
                "transplanted": self.kd_stage is not None and self.kd_stage.transplanted,
                "device": str(self.device),
            },
            self.save_dir / f"rank{RANK}.pt",
        )


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_two_rank_ddp_distils_in_sync_and_resumes(data_yaml, teacher_pt, tiny, tmp_path, monkeypatch):
    _launch(
        monkeypatch, "yolov8n.yaml", trainer=CpuDDPTrainer, teacher=str(teacher_pt), data=str(data_yaml),
        kd_recipe="ld+cwd", kd_init="none", epochs=2, val=False, save_period=1, project=str(tmp_path), name="ddp",
        **tiny,
    )  # fmt: skip
    run = tmp_path / "ddp"
    ranks = [torch.load(run / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    # each rank distilled its own shard: finite, non-zero KD terms that differ between ranks
    for rank, r in enumerate(ranks):
        assert r["device"] == f"cpu:{rank}" and r["teacher_moves"] == [r["device"]]  # its own device, not rank 0's
        assert len(r["kd_steps"]) == 4 and set(r["kd_steps"][0]) == {"kdld_loss", "kdcwd_loss"}
        assert all(math.isfinite(v) and v > 0 for step in r["kd_steps"] for v in step.values())
        assert r["report_callbacks"] == 1  # the launcher's pickled callbacks already held it
    assert ranks[0]["kd_steps"][0] != ranks[1]["kd_steps"][0]

    # one model: student and adapter weights are identical across ranks (adapters start from rank 0's, grads averaged)
    for part in ("student", "adapters"):
        a, b = ranks[0][part], ranks[1][part]
        assert a.keys() == b.keys() and len(a) > 0
        assert all(torch.equal(a[k], b[k]) for k in a), part

    # rank 0 checkpoints carry the KD state; the epoch-1 checkpoint resumes in one process
    last = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(last["kd"]["connectors"][k], v) for k, v in ranks[0]["adapters"].items())
    assert last["kd"]["teacher_metrics"]  # the teacher check ran on every rank and rank 0 kept the merged metrics
    assert (run / "kd_report.md").exists()
    epoch0 = run / "weights" / "epoch0.pt"
    saved = torch.load(epoch0, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0 and saved["optimizer"] is not None
    seen = {}

    def capture(trainer):
        seen["adapters"] = {k: v.clone() for k, v in trainer.kd_connectors.state_dict().items()}

    resumed = YOLO(epoch0)
    resumed.add_callback("on_pretrain_routine_end", capture)
    resumed.train(trainer=KDTrainer, resume=True)
    trainer = resumed.trainer
    assert trainer.start_epoch == 1 and trainer.world_size == 0 and trainer.args.kd_recipe == "ld+cwd"
    assert all(torch.equal(seen["adapters"][k], v) for k, v in saved["kd"]["connectors"].items())
    assert all(math.isfinite(float(trainer.tloss[k])) and trainer.tloss[k] > 0 for k in ("kdld_loss", "kdcwd_loss"))


def _unlabelled(data_yaml: Path, folder: Path) -> Path:
    """A folder of copies of the val images, without labels."""
    folder.mkdir()
    for f in sorted((data_yaml.parent / "images" / "val").glob("*")):
        shutil.copy(f, folder / f"u{f.name}")
    return folder


def _launch(monkeypatch, model: str | Path, **train) -> None:
    """The stock DDP launch of ``YOLO(model).train(**train)`` on CPU."""
    with monkeypatch.context() as m:
        m.setenv("ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS", "1")  # the stock launch would pip-install cloudpickle
        if importlib.util.find_spec("cloudpickle") is None:  # it pickles by value what needs it; nothing here does
            m.setitem(sys.modules, "cloudpickle", pickle)
        # a launcher with device='0,1' adds no integration callbacks (its ddp flag is set by then); on the CPU it would
        m.setattr(callbacks, "add_integration_callbacks", lambda trainer: None)
        YOLO(model).train(**train)


SHUFFLE = Path(__file__).parents[2] / "ultralytics_kd" / "cfg" / "models" / "yolov9-tiny-shufflev2-c2f.yaml"


def _worker(launcher: KDTrainer) -> KDTrainer:
    """What a DDP worker builds: the trainer from the launcher's pickled args, and the launcher's pickled student."""
    state = pickle.loads(pickle.dumps({"args": vars(launcher.args), "model": launcher.model}))
    worker = KDTrainer(cfg={**DEFAULT_CFG_DICT, "save_dir": ""}, overrides=state["args"])
    worker.model = state["model"]
    return worker


def test_worker_takes_the_launchers_start(data_yaml, teacher_pt, tiny, tmp_path):
    """Workers never build the student, so the start the launcher chose (here the mimic stage) travels with it."""
    args = dict(model=str(SHUFFLE), data=str(data_yaml), teacher=str(teacher_pt), kd_mimic_epochs=1, epochs=2)
    launcher = KDTrainer(overrides=dict(**args, kd_teacher_check=False, project=str(tmp_path), **tiny))
    launcher.model = launcher.get_model(cfg=str(SHUFFLE))
    worker = _worker(launcher)
    assert worker.kd_start.mode == "none" and worker.kd_stage is None  # before the student is set up
    worker.setup_model()
    assert worker.kd_start == launcher.kd_start and worker.kd_start.mode == "mimic"
    assert worker.kd_stage is not None and worker.kd_stage.epochs == 1
    assert not hasattr(worker.model, "kd_start")  # taken off the student: no checkpoint carries it


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_two_rank_ddp_runs_the_mimic_stage(data_yaml, teacher_pt, tiny, tmp_path, monkeypatch):
    """Both ranks run the launcher's mimic stage and take the teacher's head in step, each on its shard of the
    unlabelled images too (unlabeled=: its own DDP loader)."""
    _launch(
        monkeypatch, SHUFFLE, trainer=CpuDDPTrainer, teacher=str(teacher_pt), data=str(data_yaml), kd_mimic_epochs=1,
        epochs=2, val=False, kd_teacher_check=False, project=str(tmp_path), name="ddp",
        unlabeled=str(_unlabelled(data_yaml, tmp_path / "u")), **tiny,
    )  # fmt: skip
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for r in ranks:
        assert r["start"] == "mimic" and r["transplanted"]
        assert r["kd_steps"][0]["kdmim_loss"] > 0  # the stage's imitation term trained the first epoch
        assert r["kd_steps"][0]["umim_loss"] > 0  # on the rank's unlabelled images too
    a, b = ranks[0]["student"], ranks[1]["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class CpuDDPLabelled(CpuDDPTrainer):
    """Rank 0's validation scores the student's EMA above its labeller, rank 1's below; records each rank's labeller."""

    def validate(self):
        metrics, fitness = super().validate()
        return metrics, self.kd_labeller.fitness + 0.01 if RANK == 0 else -1.0

    def _do_train(self):
        super()._do_train()
        torch.save({"epoch": self.kd_labeller.epoch}, self.save_dir / f"labeller{RANK}.pt")


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_two_rank_ddp_takes_rank_zeros_labeller(data_yaml, teacher_pt, tiny, tmp_path, monkeypatch):
    """kd_pseudo_from=best under DDP: both ranks take the student's EMA as the labeller on rank 0's validation, though
    rank 1's own score is below its teacher, and train in sync."""
    _launch(
        monkeypatch, "yolov8n.yaml", trainer=CpuDDPLabelled, teacher=str(teacher_pt), data=str(data_yaml),
        kd_init="none", epochs=2, unlabeled=str(_unlabelled(data_yaml, tmp_path / "u")), kd_unlabeled_terms="pseudo",
        kd_pseudo_from="best", kd_unlabeled_sweep=False, project=str(tmp_path), name="ddp", **tiny,
    )  # fmt: skip
    run = tmp_path / "ddp"
    assert [torch.load(run / f"labeller{r}.pt")["epoch"] for r in (0, 1)] == [2, 2]
    ranks = [torch.load(run / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(math.isfinite(s["upcls_loss"]) for r in ranks for s in r["kd_steps"])
    a, b = ranks[0]["student"], ranks[1]["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_worker_with_missing_teacher_names_it(data_yaml, teacher_pt, tiny, tmp_path):
    """A DDP worker rebuilds the trainer from the launcher's args; a teacher gone since launch fails with its path."""
    teacher = tmp_path / "teacher.pt"
    shutil.copy(teacher_pt, teacher)
    launcher = KDTrainer(
        overrides=dict(model="yolov8n.yaml", data=str(data_yaml), teacher=str(teacher), project=str(tmp_path), **tiny)
    )
    teacher.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"teacher='{teacher}' not found")):
        KDTrainer(cfg={**DEFAULT_CFG_DICT, "save_dir": ""}, overrides=pickle.loads(pickle.dumps(vars(launcher.args))))
