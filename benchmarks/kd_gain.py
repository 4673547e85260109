"""What distillation buys: the same student trained from scratch, with Ultralytics' native distillation, with each of
our terms alone and with our recipes, all with the same YAML, data, epochs, seed, image size and hyperparameters.

Each run trains, then validates its best.pt on the val and test splits. Results are appended, one JSON line per run,
to ``--out``, so runs from separate invocations (e.g. two processes with ``--threads 1`` side by side, or more seeds
later) combine; ``--table`` prints them as a markdown table. The ``floor`` run measures what a teacher costs at best:
1 + (teacher forward time) / (plain student training step time).

Run names:
    scratch             no teacher
    native<dis>         Ultralytics' distill_model=<teacher> at dis=<dis>, e.g. native6 (its default), native0.5
    default, seed       our named recipes
    <term>[+<term>][@w] our terms alone or combined, optional weight for each, e.g. cls_bce, cwd@0.5, cls_bce+ld@2
    floor               timing only: teacher forward vs plain student step

    python benchmarks/kd_gain.py --runs scratch,native6,native1,default --epochs 40 --imgsz 320 --seed 0
    python benchmarks/kd_gain.py --runs cls_bce,ld,cwd --threads 1 &   # a second process alongside
    python benchmarks/kd_gain.py --table
    python benchmarks/kd_gain.py --runs scratch,default,floor --epochs 1 --fraction 0.1 --imgsz 160  # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = "scratch,native6,native1,native0.5,native0.1,cls_bce,cls_kl,ld,box,feat_mse,cwd,sl2,default,floor"


def build_parser(doc: str = __doc__) -> argparse.ArgumentParser:
    """The benchmark's flags (shared with kd_grad.py)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated run names (default: {DEFAULT_RUNS})")
    p.add_argument("--data", default=str(ROOT / "../shared/data/bccd/data.yaml"))
    p.add_argument("--teacher", default=str(ROOT / "../shared/teachers/bccd-yolov9s-320.pt"))
    p.add_argument("--student", default="yolov9t.yaml")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the train split (smoke runs)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument(
        "--student-init",
        action="store_true",
        help="scratch and native runs also start from a uniform selection of the teacher's weights (as kd_init=select)",
    )
    p.add_argument(
        "--continue-from",
        default=None,
        metavar="RUN:EPOCHS",
        help="start every run from the best.pt of an earlier run in --out (same student, seed and imgsz), e.g.\n"
        "scratch:40 continues the 40-epoch scratch student for --epochs more (a student with weights of its own)",
    )
    p.add_argument("--kd", nargs="*", default=[], metavar="KEY=VALUE", help="extra kd_* settings for our runs")
    p.add_argument("--project", default=str(ROOT / "runs" / "kd_gain"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kd_gain.jsonl"))
    p.add_argument("--table", action="store_true", help="print the results in --out as a markdown table and exit")
    p.add_argument("--since", default="", metavar="DATE", help="--table: only rows run on or after DATE (2026-12-06)")
    p.add_argument("--until", default="", metavar="DATE", help="--table: only rows run on or before DATE")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def run_kwargs(name: str, args: argparse.Namespace) -> dict:
    """Train arguments specific to one run name (on top of the shared ones)."""
    from ultralytics.cfg import smart_value

    from ultralytics_kd.distill import get_recipe

    if name == "scratch":
        return {}
    if name.startswith("native"):
        return {"distill_model": args.teacher, "dis": float(name[len("native") :])}
    recipe, _, weight = name.partition("@")
    get_recipe(recipe)  # fail on a bad name before training anything
    kw = {"teacher": args.teacher, "kd_recipe": recipe}
    if weight:
        kw["kd_weights"] = float(weight)
    for pair in args.kd:
        k, v = pair.split("=", 1)
        kw[k] = smart_value(v)
    return kw


def _init_trainer(teacher: str):
    """The stock trainer, its student started from a uniform selection of the teacher's weights; nothing else."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.tasks import load_checkpoint

    from ultralytics_kd.distill.inherit import select_weights

    class InitTrainer(DetectionTrainer):
        def get_model(self, cfg=None, weights=None, verbose=True):
            model = super().get_model(cfg, weights, verbose)
            if weights is None and not self.resume:
                select_weights(model, load_checkpoint(teacher)[0].float())
            return model

    return InitTrainer


def train_and_test(name: str, args: argparse.Namespace) -> dict:
    """Train one run, validate its best.pt on val and test; return a result row."""
    from ultralytics import YOLO

    from ultralytics_kd import KDTrainer

    kw = run_kwargs(name, args)
    train_time = {"total": 0.0, "start": 0.0}

    def epoch_start(trainer):
        train_time["start"] = time.perf_counter()

    def epoch_end(trainer):  # the batch loop only: validation and saving cost the same in every run
        train_time["total"] += time.perf_counter() - train_time["start"]

    model = YOLO(start_weights(args) or args.student)
    model.add_callback("on_train_epoch_start", epoch_start)
    model.add_callback("on_train_epoch_end", epoch_end)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    model.train(
        trainer=KDTrainer if "teacher" in kw else _init_trainer(args.teacher) if args.student_init else None,
        data=args.data,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        fraction=args.fraction,
        project=args.project,
        name=f"{name}-e{args.epochs}-s{args.seed}-{stamp}",
        plots=False,
        amp=False,
        patience=0,
        **kw,
    )
    wall = time.perf_counter() - t0
    best = model.trainer.best if model.trainer.best.exists() else model.trainer.last
    row = {"run": name, "settings": {k: v for k, v in kw.items() if k not in {"teacher", "distill_model"}}}
    for split in ("val", "test"):
        m = YOLO(best).val(
            data=args.data, split=split, imgsz=args.imgsz, batch=args.batch, device=args.device, plots=False,
            project=str(model.trainer.save_dir), name=f"val-{split}", exist_ok=True,
        )  # fmt: skip
        row[f"{split}_map"], row[f"{split}_map50"] = float(m.box.map), float(m.box.map50)
        row[f"{split}_map_per_class"] = {m.names[i]: float(v) for i, v in enumerate(m.box.maps)}
    row.update(epoch_time_s=train_time["total"] / args.epochs, wall_s=wall, save_dir=str(model.trainer.save_dir))
    return row


def start_weights(args: argparse.Namespace) -> str | None:
    """The best.pt of the ``--continue-from`` run (latest row of that run, student, seed and imgsz in ``--out``)."""
    if not args.continue_from:
        return None
    run, _, epochs = args.continue_from.rpartition(":")
    path = Path(args.out)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    match = [
        r for r in rows
        if (r["run"], r.get("epochs"), r.get("student"), r.get("seed"), r.get("imgsz"), r.get("start"))
        == (run, int(epochs), args.student, args.seed, args.imgsz, None)
    ]  # fmt: skip
    best = Path(match[-1]["save_dir"]) / "weights" / "best.pt" if match else None
    if best is None or not best.is_file():
        raise FileNotFoundError(
            f"--continue-from {args.continue_from}: no {best or 'run'} for {args.student} at seed {args.seed}, imgsz "
            f"{args.imgsz} in {path}; train it first: --runs {run} --epochs {epochs} --seed {args.seed}"
        )
    return str(best)


def measure_floor(args: argparse.Namespace, repeats: int = 10) -> dict:
    """Time the teacher's forward and a plain student training step on the same batch of ``imgsz`` images."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import select_device

    from ultralytics_kd.deploy.measure import time_call
    from ultralytics_kd.distill.teacher import FrozenTeacher, load_teacher

    device = select_device(args.device, verbose=False)
    teacher = FrozenTeacher(load_teacher(args.teacher)).to(device)
    student = DetectionModel(args.student, nc=teacher.model.model[-1].nc, verbose=False).to(device).train()
    student.args = get_cfg()
    opt = torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9)
    n = args.batch
    img = torch.rand(n, 3, args.imgsz, args.imgsz, device=device)
    batch = {
        "img": img,
        "batch_idx": torch.arange(n, device=device).float(),
        "cls": torch.zeros(n, 1, device=device),
        "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]], device=device).repeat(n, 1),
    }

    def step():
        opt.zero_grad()
        loss, _ = student.loss(batch)
        loss.sum().backward()
        opt.step()

    def timed(fn) -> float:
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        return time_call(lambda _: fn(), None, warmup=1, reps=repeats, sync=sync).median / 1e3  # seconds

    t_teacher, t_step = timed(lambda: teacher(img)), timed(step)
    return {"run": "floor", "teacher_fwd_s": t_teacher, "student_step_s": t_step, "floor": 1 + t_teacher / t_step}


def print_table(path: Path, since: str = "", until: str = "") -> None:
    """Markdown table per (student, epochs, imgsz, fraction): mean over seeds, latest row per (run, seed).

    ``since`` and ``until`` keep the rows whose date is in that range (ISO dates, inclusive), e.g. the continuation runs
    of one session, whose starts differ from an earlier session's.
    """
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows = [r for r in rows if since <= r.get("date", "")[:10] and (not until or r.get("date", "")[:10] <= until)]
    if not rows:
        print(f"no results in {path}")
        return
    latest = {}
    for r in rows:
        student = r.get("student") + (f", continued from its {r['start']}" if r.get("start") else "")
        setting = (student, r.get("epochs"), r.get("imgsz"), r.get("fraction", 1.0))
        latest[(*setting, r["run"], r.get("seed"))] = r
    groups = defaultdict(list)
    for key, r in latest.items():
        groups[key[:5]].append(r)
    mean = lambda rs, k: statistics.fmean(r[k] for r in rs)  # noqa: E731
    for setting in sorted({k[:4] for k in groups if k[4] != "floor"}, key=str):
        student, epochs, imgsz, fraction = setting
        keys = sorted((k for k in groups if k[:4] == setting and k[4] != "floor"), key=_order)
        classes = list(groups[keys[0]][0].get("test_map_per_class") or {})
        print(f"\n### {student}, {epochs} epochs, imgsz {imgsz}" + (f", fraction {fraction}" if fraction != 1 else ""))
        head = ["run", "seeds", "val mAP50-95", "val mAP50", "test mAP50-95", "test mAP50"]
        head += [f"test {c}" for c in classes] + ["test mAP50-95 by seed", "vs scratch, paired [95% CI]"]
        head += ["epoch time vs scratch"]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        scratch = groups.get((*setting, "scratch"), [])
        for key in keys:
            rs = groups[key]
            cells = [f"{mean(rs, k):.3f}" for k in ("val_map", "val_map50", "test_map", "test_map50")]
            cells += [f"{statistics.fmean(r['test_map_per_class'][c] for r in rs):.3f}" for c in classes]
            cells.append(", ".join(f"{r['test_map']:.3f} (s{r['seed']})" for r in sorted(rs, key=lambda r: r["seed"])))
            cells.append(paired_difference(rs, scratch) if key[4] != "scratch" else "")
            ratios = [
                r["epoch_time_s"] / b for r in rs if r.get("epoch_time_s") and (b := _scratch_epoch_time(r, scratch))
            ]
            cells.append(f"{statistics.fmean(ratios):.2f}x" if ratios else "n/a")
            print(f"| {key[4]} | {len(rs)} | " + " | ".join(cells) + " |")
        floors = [r for k, rs in groups.items() if k[4] == "floor" and k[0] == student and k[2] == imgsz for r in rs]
        if floors:
            f = floors[-1]
            print(
                f"\nFloor (teacher forward {f['teacher_fwd_s'] * 1e3:.0f} ms / student step "
                f"{f['student_step_s'] * 1e3:.0f} ms at batch {f.get('batch')}, {f.get('threads')} threads): "
                f"{f['floor']:.2f}x"
            )


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def paired_difference(rows: list[dict], baseline: list[dict], key: str = "test_map") -> str:
    """Mean of the per-seed differences to the baseline at the same seed, in mAP points, with a 95 % t interval.

    Continuation rows pair only with a baseline continued from the same checkpoint (``start_dir``, where both have it).
    """
    base = {r["seed"]: r for r in baseline}
    d = [
        100 * (r[key] - base[r["seed"]][key])
        for r in rows
        if r["seed"] in base and r.get("start_dir", "") == base[r["seed"]].get("start_dir", r.get("start_dir", ""))
    ]
    if not d:
        return "n/a"
    if len(d) == 1:
        return f"{d[0]:+.1f} (1 seed)"
    t = _T975.get(len(d) - 1, 1.96)  # Student's t, 97.5 % quantile; normal beyond 10 degrees of freedom
    m, half = statistics.fmean(d), t * statistics.stdev(d) / len(d) ** 0.5
    return f"{m:+.1f} [{m - half:+.1f}, {m + half:+.1f}], n={len(d)}"


def _scratch_epoch_time(row: dict, scratch: list[dict]) -> float | None:
    """Mean scratch epoch time measured on the same day as ``row``: the machine's load differs from day to day (the
    same KD run took 68 s per epoch on one day and 43 s on another), so only same-day ratios compare."""
    day = row.get("date", "")[:10]
    same = [r["epoch_time_s"] for r in scratch if r.get("date", "")[:10] == day]
    return statistics.fmean(same) if same else None


def _order(key) -> tuple:
    run = key[4]
    rank = 0 if run == "scratch" else 1 if run.startswith("native") else 3 if run in {"default", "seed"} else 2
    return rank, run


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if args.table:
        print_table(out, args.since, args.until)
        return
    import torch

    if args.threads:
        import ultralytics.utils.torch_utils as tu

        # select_device() resets torch's thread count to Ultralytics' NUM_THREADS (cores - 1) on every trainer and
        # validator it builds, so the setting has to go there to last
        tu.NUM_THREADS = args.threads
        torch.set_num_threads(args.threads)
    import ultralytics_kd  # noqa: F401  (registers plugin blocks for plugin student YAMLs)

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for name in runs:  # validate every name before the first (long) training
        if name != "floor":
            run_kwargs(name, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    common = {k: getattr(args, k) for k in ("epochs", "imgsz", "batch", "seed", "fraction", "student", "device")}
    if args.continue_from:
        common["start"] = args.continue_from  # fails before the first training if the earlier run is missing:
        common["start_dir"] = str(Path(start_weights(args)).parents[1])
    for name in runs:
        row = measure_floor(args) if name == "floor" else train_and_test(name, args)
        if args.kd and name not in {"scratch", "floor"} and not name.startswith("native"):
            row["run"] = f"{name} [{' '.join(args.kd)}]"  # a variant: keep it apart from the plain run in the table
        if args.student_init and (name == "scratch" or name.startswith("native")):
            row["run"] = f"{name} [student_init]"
        row = {
            **common,
            **row,
            "date": datetime.now().isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(),
        }
        with open(out, "a") as f:  # one line per run, appended: separate invocations combine
            f.write(json.dumps(row) + "\n")
        print(f"kd_gain: {name}: " + json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}))
    print_table(out)


if __name__ == "__main__":
    main()
