"""Distillation on images without labels (issue #27): a labelled share L of a dataset's training images, the rest U
with its labels hidden, a teacher trained on L only, and five arms on the same val and test splits.

Split rule (the same on every dataset): L = every k-th training image by sorted name (k=4: 25 %), U = the others.

Arms (test mAP50-95 of each run's best.pt; ``--seed`` for every arm alike):
    plain     the student on L, no teacher
    kd        the default distillation on L
    pseudo    the stock baseline: the teacher labels U with stock predict(save_txt=True, conf=c) for c in --confs,
              the student trains plainly on L + those labels; the conf with the best val mAP is the arm's figure
              (each conf's run is kept as a row 'pseudo<c>' and reused at the same setting and seed)
    kd_u      the default distillation on L with unlabeled=U (the plugin's path) and kd_unlabeled_terms=pseudo, the
              plugin's default, set here so that every 'kd_u' row means the same should the default change;
              kd_u:CHOICE sets kd_unlabeled_terms=CHOICE (dense, pseudo, dense+pseudo, recipe), e.g. kd_u:dense
    ceiling   the student on L + U with U's real labels (the dataset's whole train split)
    plain@steps, kd@steps   plain and kd at kd_u's optimizer-step count: kd_u's epochs sweep U (the labelled images
              repeat within them), so it takes about |U|/|L| times as many batches per epoch (10 against 4 at k=4,
              batch 16: these arms train 100 epochs for kd_u's 40); the table counts plain and kd
              as the better (by mean) of their 40-epoch and step-matched runs, as issue #27 asks

--kd KEY=VALUE sets kd_* keys of the kd and kd_u arms; such a run is a variant, listed apart as 'arm [KEY=VALUE]'.
--set KEY=VALUE sets stock training keys of every arm in the run (a continuation's schedule, say); its rows form a table
of their own, so that each arm pairs only with arms trained the same way.

    python benchmarks/unlabeled.py split --data ../shared/data/bccd/data.yaml --every 4
    python benchmarks/unlabeled.py teacher --every 4 --epochs 100 --threads 2     # YOLOv9-s on L only (--resume: go on)
    python benchmarks/unlabeled.py teacher --teacher-tag nbs16 --teacher-set nbs=16   # another teacher of the split;
    python benchmarks/unlabeled.py run --arms kd_u --teacher-tag nbs16 --seed 0        # its rows: their own table
    python benchmarks/unlabeled.py run --arms plain,kd,kd_u --student yolov9t.yaml --seed 0 --threads 1
    python benchmarks/unlabeled.py run --arms plain --continue-from plain:40 --set lr0=2e-4 optimizer=AdamW
    python benchmarks/unlabeled.py table
    python benchmarks/unlabeled.py labels --confs 0.1,0.25,0.5   # the teacher's pseudo-labels on U against U's labels
    python benchmarks/unlabeled.py cost --epochs 2 --threads 1   # kd_u's time per image against its floor, one process
    python benchmarks/unlabeled.py run --arms plain,kd_u,pseudo --epochs 1 --imgsz 160 --confs 0.25   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_gain import ROOT, paired_difference  # noqa: E402

ARMS = ("plain", "kd", "pseudo", "kd_u", "ceiling")
MATCHED = "@steps"  # plain@steps, kd@steps: at kd_u's optimizer-step count
TEACHER_FREE = {"plain", "plain" + MATCHED, "ceiling"}  # arms no teacher takes part in: shared by every teacher
IMG_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cmd", choices=("split", "teacher", "run", "table", "labels", "cost"))
    p.add_argument("--data", default=str(ROOT / "../shared/data/bccd/data.yaml"), help="the dataset's data.yaml")
    p.add_argument("--every", type=int, default=4, help="L = every k-th training image by sorted name")
    p.add_argument("--root", default=str(ROOT / "datasets" / "unlabeled"), help="where splits are written (links)")
    p.add_argument("--teacher", default="", help="teacher .pt (default: the split's teacher from the teacher step)")
    p.add_argument("--teacher-model", default="yolov9s.yaml")
    p.add_argument(
        "--teacher-tag", default="", help="another teacher of the split: its run is teacher-<split>-<tag>; rows made "
        "with it record the tag and form their own table, sharing the teacher-free arms (plain, plain@steps, ceiling)"
    )  # fmt: skip
    p.add_argument("--teacher-set", nargs="*", default=[], metavar="KEY=VALUE", help="teacher: extra training settings")
    p.add_argument("--student", default="yolov9t.yaml")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--confs", default="0.1,0.25,0.5", help="pseudo: the teacher's predict conf values to choose from")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--project", default=str(ROOT / "runs" / "unlabeled"))
    p.add_argument("--resume", action="store_true", help="teacher: go on from the stopped teacher run's last.pt")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "unlabeled.jsonl"))
    p.add_argument(
        "--continue-from", default="", metavar="ARM:EPOCHS", help="start from that run's best.pt, e.g. plain:40"
    )
    p.add_argument("--kd", nargs="*", default=[], metavar="KEY=VALUE", help="extra kd_* settings for kd and kd_u arms")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="stock training settings of every arm in the run (e.g. a continuation's lr0); their rows: a table apart",
    )  # fmt: skip
    return p


def split_dir(args) -> Path:
    return Path(args.root) / f"{Path(args.data).resolve().parent.name}-every{args.every}"


def make_split(args) -> Path:
    """Link L (images and labels) and U (images only) under the split folder; write data_L.yaml; return it."""
    import yaml
    from ultralytics.data.utils import check_det_dataset, img2label_paths

    data = check_det_dataset(args.data)
    train = sorted(p for p in Path(data["train"]).rglob("*") if p.suffix.lower() in IMG_SUFFIXES)
    out = split_dir(args)
    for kind in ("L/images/train", "L/labels/train", "U/images"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    n_l = 0
    for i, (img, label) in enumerate(zip(train, img2label_paths([str(p) for p in train]))):
        if i % args.every == 0:
            _link(img, out / "L/images/train" / img.name)
            if Path(label).is_file():
                _link(Path(label), out / "L/labels/train" / Path(label).name)
            n_l += 1
        else:
            _link(img, out / "U/images" / img.name)
    spec = {"path": str(out), "train": str(out / "L/images/train"), "val": data["val"], "names": data["names"]}
    if data.get("test"):
        spec["test"] = data["test"]
    (out / "data_L.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    info = {"data": str(Path(args.data).resolve()), "every": args.every, "L": n_l, "U": len(train) - n_l}
    (out / "split.json").write_text(json.dumps(info, indent=1))
    print(f"split: {info} -> {out}")
    return out / "data_L.yaml"


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def train_args(args, name: str) -> dict:
    return dict(
        epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, seed=args.seed, workers=args.workers,
        device=args.device, project=args.project, name=name, plots=False, amp=False, patience=0, exist_ok=True,
    )  # fmt: skip


def settings(pairs: list[str]) -> dict:
    """KEY=VALUE pairs of the command line as training arguments, valued as Ultralytics values them."""
    from ultralytics.cfg import smart_value

    return {k: smart_value(v) for k, v in (x.split("=", 1) for x in pairs)}


def teacher_name(args) -> str:
    """The teacher's run name: teacher-<split>, or teacher-<split>-<tag> for another teacher of the split."""
    return f"teacher-{split_dir(args).name}" + (f"-{args.teacher_tag}" if args.teacher_tag else "")


def teacher_path(args) -> str:
    return args.teacher or str(Path(args.project) / teacher_name(args) / "weights" / "best.pt")


def train_teacher(args) -> None:
    """The teacher from scratch on L only (it never sees U's labels), then its val/test scores as a row."""
    from ultralytics import YOLO

    data_l = split_dir(args) / "data_L.yaml"
    last = Path(args.project) / teacher_name(args) / "weights" / "last.pt"
    if args.resume and last.is_file():  # a teacher run that was stopped goes on from its last epoch
        model = YOLO(last)
        model.train(resume=True, workers=args.workers)
    else:
        model = YOLO(args.teacher_model)
        extra = settings(args.teacher_set)
        model.train(data=str(data_l), **{**train_args(args, teacher_name(args)), "seed": 0, **extra})
    row = {"arm": "teacher", "student": args.teacher_model, **score(model.trainer.best, data_l, args)}
    row.update({"set": args.teacher_set} if args.teacher_set else {})
    append(args, row, model.trainer)


def score(weights: Path | str, data: Path | str, args) -> dict:
    from ultralytics import YOLO

    out = {}
    for split in ("val", "test"):
        m = YOLO(weights).val(
            data=str(data),
            split=split,
            imgsz=args.imgsz,
            batch=args.batch,
            device=args.device,
            plots=False,
            project=str(Path(weights).parents[1]),
            name=f"val-{split}",
            exist_ok=True,
        )
        out[f"{split}_map"], out[f"{split}_map50"] = float(m.box.map), float(m.box.map50)
    return out


def pseudo_set(args, conf: float) -> Path:
    """L plus U labelled by the teacher's stock predict(save_txt=True, conf=conf); its data YAML."""
    import yaml
    from ultralytics import YOLO

    base = split_dir(args)
    out = base / f"P{conf:g}-{Path(teacher_path(args)).parents[1].name}"
    if not (out / "data.yaml").is_file():
        pred = YOLO(teacher_path(args)).predict(
            source=str(base / "U/images"), conf=conf, save_txt=True, save=False, imgsz=args.imgsz, stream=True,
            device=args.device, project=str(out), name="predict", exist_ok=True, verbose=False,
        )  # fmt: skip
        for _ in pred:  # stream: one image at a time
            pass
        for kind in ("images/train", "labels/train"):
            (out / kind).mkdir(parents=True, exist_ok=True)
        for img in (base / "L/images/train").iterdir():
            _link(img, out / "images/train" / img.name)
        for lab in (base / "L/labels/train").iterdir():
            _link(lab, out / "labels/train" / lab.name)
        for img in (base / "U/images").iterdir():
            _link(img, out / "images/train" / img.name)
        for lab in (out / "predict/labels").glob("*.txt"):  # an image the teacher saw nothing in stays a background
            _link(lab, out / "labels/train" / lab.name)
        spec = yaml.safe_load((base / "data_L.yaml").read_text())
        spec.update(path=str(out), train=str(out / "images/train"))
        (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out / "data.yaml"


def _boxes(path: Path):
    """Classes (n,) and xyxy boxes (n, 4) of a YOLO label file; empty where there is none."""
    import torch
    from ultralytics.utils.ops import xywh2xyxy

    rows = [r.split()[:5] for r in path.read_text().splitlines() if r.strip()] if path.is_file() else []
    a = torch.tensor([[float(x) for x in r] for r in rows]).reshape(-1, 5)
    return a[:, 0], xywh2xyxy(a[:, 1:])


def matched(pred, true, iou: float = 0.5) -> int:
    """Pseudo-boxes that match a real box of the same class at IoU >= ``iou``, one to one, best pairs first."""
    from ultralytics.utils.metrics import box_iou

    (pc, pb), (tc, tb) = pred, true
    if not len(pb) or not len(tb):
        return 0
    m = box_iou(pb, tb) * (pc[:, None] == tc[None])
    pairs = sorted(((float(m[i, j]), i, j) for i, j in (m >= iou).nonzero().tolist()), reverse=True)
    used_p, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i), used_t.add(j)
    return len(used_p)


def label_quality(args) -> None:
    """The stock pseudo-labels (the teacher's predict at each --confs value, as the pseudo arm makes them) against U's
    real labels, which no arm reads: precision and recall at IoU 0.5, same class. A real box the pseudo-labels miss is
    a background to the stock loss."""
    from ultralytics.data.utils import img2label_paths

    images = sorted(p for p in (split_dir(args) / "U/images").iterdir() if p.suffix.lower() in IMG_SUFFIXES)
    truth = [_boxes(Path(t)) for t in img2label_paths([str(p.resolve()) for p in images])]
    n_true = sum(len(c) for c, _ in truth)
    print(f"\n{split_dir(args).name}: U = {len(images)} images, {n_true} real boxes; teacher {teacher_path(args)}")
    print("| teacher conf | pseudo-boxes | precision | recall |\n|---|---|---|---|")
    for conf in (float(c) for c in args.confs.split(",")):
        labels = pseudo_set(args, conf).parent / "predict" / "labels"
        preds = [_boxes(labels / f"{p.stem}.txt") for p in images]
        tp, n_pred = sum(matched(p, t) for p, t in zip(preds, truth)), sum(len(c) for c, _ in preds)
        print(f"| {conf:g} | {n_pred} | {tp / max(n_pred, 1):.3f} | {tp / max(n_true, 1):.3f} |")


def run_arm(args, arm: str) -> dict:
    """Train one arm at this seed; return its row (the pseudo arm: the best-val conf among --confs)."""
    from ultralytics_kd import KDTrainer

    base, stamp = split_dir(args), datetime.now().strftime("%Y%m%d-%H%M%S")
    data_l = base / "data_L.yaml"
    if arm == "pseudo":
        rows = [pseudo_candidate(args, c, stamp) for c in args.confs.split(",")]
        best = max(rows, key=lambda r: r["val_map"])
        return {**best, "arm": "pseudo", "candidates": {r["arm"]: r["val_map"] for r in rows}}
    if arm.endswith(MATCHED):  # plain or kd at the step count of kd_u (sweeping U) in as many epochs as that takes
        arm = arm.removesuffix(MATCHED)
        kw_m = {"epochs": matched_epochs(args)}
        if arm == "plain":
            return run_one(args, f"plain{MATCHED}", data_l, stamp, **kw_m)
    else:
        kw_m = {}
    if arm in {"plain", "ceiling"}:
        return run_one(args, arm, data_l if arm == "plain" else Path(args.data), stamp)
    kw = {"trainer": KDTrainer, "teacher": teacher_path(args), **kw_m}
    if arm.startswith("kd_u"):
        kw["unlabeled"] = str(base / "U/images")
        kw["kd_unlabeled_terms"] = arm.partition(":")[2] or "pseudo"  # bare kd_u: what its rows ran, sessions 17-23
    kw.update(settings(args.kd))
    label = arm + (MATCHED if kw_m else "") + (f" [{' '.join(args.kd)}]" if args.kd else "")  # variants: apart
    return run_one(args, label, data_l, stamp, **kw)


def pseudo_candidate(args, conf: str, stamp: str) -> dict:
    """The pseudo arm's run at one conf: the row already in --out at this setting and seed, else a new run (kept)."""
    arm = f"pseudo{conf}"
    key = (split_dir(args).name, args.student, args.epochs, args.imgsz, args.seed, args.teacher_tag or None, args.set)
    for r in read_rows(args.out):
        here = (r["split"], r["student"], r["epochs"], r["imgsz"], r["seed"], r.get("teacher"), r.get("train_set", []))
        if r["arm"] == arm and here == key:
            return r
    row = run_one(args, arm, pseudo_set(args, float(conf)), stamp)
    append(args, row)
    return row


def matched_epochs(args) -> int:
    """Epochs at which plain or kd on L take the optimizer steps of kd_u at --epochs (which sweeps U every epoch)."""
    info = json.loads((split_dir(args) / "split.json").read_text())
    n_l, n_u, b = info["L"], info["U"], args.batch
    ratio = float(dict(x.split("=", 1) for x in args.kd).get("kd_unlabeled_ratio", 1.0))
    per_epoch = math.ceil(n_l * max(1, math.ceil(n_u / (n_l * ratio))) / b)
    return round(args.epochs * per_epoch / math.ceil(n_l / b))


def run_one(args, arm: str, data: Path, stamp: str, **kw) -> dict:
    from ultralytics import YOLO

    model = YOLO(start_weights(args) or args.student)
    t0 = time.perf_counter()
    tag = arm.replace(":", "-").replace(" [", "-").replace("]", "").replace(" ", "-").replace("=", "")
    name = f"{tag}-{Path(args.student).stem}-s{args.seed}-{stamp}"
    model.train(data=str(data), **{**train_args(args, name), **settings(args.set), **kw})
    trainer = model.trainer
    steps = trainer.epochs * math.ceil(len(trainer.train_loader.dataset) / trainer.batch_size)
    row = {"arm": arm, "student": args.student, "steps": steps, "wall_s": time.perf_counter() - t0}
    return {
        **row,
        **score(trainer.best, data if arm != "ceiling" else args.data, args),
        "save_dir": str(trainer.save_dir),
    }


def start_weights(args) -> str | None:
    """The best.pt of ``--continue-from``: the latest row of that arm and epochs at this split, student and seed."""
    if not args.continue_from:
        return None
    arm, _, epochs = args.continue_from.rpartition(":")
    rows = read_rows(args.out)
    key = (arm, int(epochs), split_dir(args).name, args.student, args.seed, args.imgsz, None, None)
    match = [
        r
        for r in rows
        if (r["arm"], r["epochs"], r["split"], r["student"], r["seed"], r["imgsz"], r.get("start"), r.get("train_set"))
        == key
    ]
    best = Path(match[-1]["save_dir"]) / "weights" / "best.pt" if match else None
    if best is None or not best.is_file():
        raise FileNotFoundError(
            f"--continue-from {args.continue_from}: no {best or 'run'} at seed {args.seed}; run it first"
        )
    return str(best)


def read_rows(out: str) -> list[dict]:
    """The rows of the results file (none when it does not exist yet)."""
    path = Path(out)
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def append(args, row: dict, trainer=None) -> None:
    row = {
        **row, **({"start": args.continue_from} if args.continue_from else {}), "split": split_dir(args).name,
        **({"train_set": args.set} if args.set and row["arm"] != "teacher" else {}),
        **({"teacher": args.teacher_tag} if args.teacher_tag and row["arm"] not in TEACHER_FREE else {}),
        "seed": args.seed, "epochs": args.epochs, "imgsz": args.imgsz,
        "date": datetime.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print("unlabeled: " + json.dumps(row))


def epoch_cost(args) -> dict:
    """kd_u's training time per image against its floor, in one process, each run's last (warm) epoch timed.

    The floor is a plain epoch over the same kinds of image (L + U with U's real labels, at the batch of one kd_u step:
    ``--batch`` labelled plus as many unlabelled images) plus the teacher's forward on them: 1 + teacher / plain.
    """
    import torch
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import select_device

    from ultralytics_kd import KDTrainer
    from ultralytics_kd.deploy.measure import time_call
    from ultralytics_kd.distill.teacher import FrozenTeacher, load_teacher

    def per_image(base, data: Path, batch: int, **kw) -> float:
        seen, marks = [], []

        class Counting(base):
            def preprocess_batch(self, b: dict) -> dict:
                b = super().preprocess_batch(b)
                seen.append(b["img"].shape[0])
                return b

        model = YOLO(args.student)
        for event in ("on_train_epoch_start", "on_train_epoch_end"):
            model.add_callback(event, lambda _: marks.append((time.perf_counter(), len(seen))))
        name = f"cost-{base.__name__}-{Path(args.student).stem}-s{args.seed}"
        model.train(data=str(data), trainer=Counting, **{**train_args(args, name), "batch": batch, "val": False, **kw})
        (t0, i0), (t1, i1) = marks[-2:]
        return (t1 - t0) / sum(seen[i0:i1])

    base, b = split_dir(args), args.batch
    t_plain = per_image(DetectionTrainer, Path(args.data), 2 * b)
    t_kd_u = per_image(KDTrainer, base / "data_L.yaml", b, teacher=teacher_path(args), unlabeled=str(base / "U/images"))
    device = select_device(args.device, verbose=False)  # where the two trainings ran
    teacher = FrozenTeacher(load_teacher(teacher_path(args))).to(device)
    img = torch.rand(2 * b, 3, args.imgsz, args.imgsz, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    t_teacher = time_call(lambda _: teacher(img), None, warmup=1, reps=10, sync=sync).median / 1e3 / (2 * b)
    floor = 1 + t_teacher / t_plain
    return {"arm": "cost", "student": args.student, "plain_img_s": t_plain, "kd_u_img_s": t_kd_u,
            "teacher_img_s": t_teacher, "ratio": t_kd_u / t_plain, "floor": floor}  # fmt: skip


def print_cost(rows: list[dict]) -> None:
    for r in rows:
        print(
            f"\nEpoch cost, {r['split']}, {r['student']} ({r['date'][:10]}, last of {r['epochs']} epochs, imgsz "
            f"{r['imgsz']}): kd_u {1e3 * r['kd_u_img_s']:.0f} ms per image, {r['ratio']:.2f}x a plain epoch over L + "
            f"U ({1e3 * r['plain_img_s']:.0f} ms); floor {r['floor']:.2f}x (the teacher's forward, "
            f"{1e3 * r['teacher_img_s']:.0f} ms per image); {r['ratio'] / r['floor']:.2f}x its floor"
        )


def print_table(args) -> None:
    """Per (split, student, epochs, start, teacher): each arm's mean, per-seed values, paired differences to
    plain/kd/pseudo. Another teacher of the split (``--teacher-tag``) gets its own table, which takes the teacher-free
    arms (plain, plain@steps, ceiling) from the split's own teacher's."""
    rows = read_rows(args.out)
    print_cost([r for r in rows if r["arm"] == "cost"])
    rows = [r for r in rows if r["arm"] != "cost"]
    latest = {
        (r["split"], r["student"], r["epochs"], r["imgsz"], _start(r), r.get("teacher"), r["arm"], r["seed"]): r
        for r in rows
    }
    settings = sorted({k[:6] for k in latest if k[6] != "teacher"}, key=lambda k: (str(k[:5]), k[5] or ""))
    for setting in settings:
        shared = (*setting[:5], None)  # the split's own teacher's setting: its teacher-free arms serve every teacher
        here = {k[6] for k in latest if k[:6] == setting or k[:6] == shared and k[6] in TEACHER_FREE}
        names = [*ARMS, *sorted(here - {*ARMS, "teacher"})]
        own = {a: shared if a in TEACHER_FREE else setting for a in names}
        arms = {a: [r for k, r in latest.items() if k[:6] == own[a] and k[6] == a] for a in names}
        start = f", {setting[4]}" if setting[4] else ""
        teacher = f", teacher {setting[5]}" if setting[5] else ""
        print(f"\n### {setting[0]}: {setting[1]}, {setting[2]} epochs{start}, imgsz {setting[3]}{teacher}")
        print("| arm | seeds | test mAP50-95 | by seed | vs plain | vs kd | vs pseudo | share of plain->ceiling |")
        print("|---|---|---|---|---|---|---|---|")
        ceiling = arms["ceiling"]
        # plain and kd count as the better (by mean) of 40 epochs and kd_u's step count, where both ran
        ref = {b: max((arms[b], arms.get(b + MATCHED, [])), key=_mean) for b in ("plain", "kd")} | {
            "pseudo": arms["pseudo"]
        }
        for arm, rs in arms.items():
            if not rs:
                continue
            m = _mean(rs)
            by = ", ".join(f"{r['test_map']:.3f}" for r in sorted(rs, key=lambda r: r["seed"]))
            diffs = [paired_difference(rs, ref[b]) if rs is not ref[b] and ref[b] else "" for b in ref]
            share = ""
            if ref["plain"] and ceiling and arm not in {"plain", "ceiling"}:
                gap = _mean(ceiling) - _mean(ref["plain"])
                share = f"{100 * (m - _mean(ref['plain'])) / gap:.0f} %" if gap else ""
            print(f"| {arm} | {len(rs)} | {m:.3f} | {by} | " + " | ".join(diffs) + f" | {share} |")
        for arm, rs in arms.items():  # what unlabelled images learn: each choice against kd_u (pseudo), paired
            if arm.startswith("kd_u:") and "[" not in arm and rs and arms["kd_u"]:
                print(f"\n{arm} - kd_u (pseudo), test mAP50-95: {paired_difference(rs, arms['kd_u'])}")


def _start(row: dict) -> str | None:
    """How a row's run started, as its table's title says it: its --continue-from and its --set (a changed schedule is a
    changed baseline, so it names a table of its own)."""
    parts = [f"from each seed's {row['start']} best.pt"] if row.get("start") else []
    parts += [f"with {' '.join(row['train_set'])}"] if row.get("train_set") else []
    return ", ".join(parts) or None


def _mean(rows: list[dict]) -> float:
    return statistics.fmean(r["test_map"] for r in rows) if rows else -1.0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.cmd == "table":
        return print_table(args)
    if args.threads:
        import torch
        import ultralytics.utils.torch_utils as tu

        tu.NUM_THREADS = args.threads  # select_device() resets torch's threads to this on every trainer
        torch.set_num_threads(args.threads)
    import ultralytics_kd  # noqa: F401

    if args.cmd == "split":
        make_split(args)
    elif args.cmd == "labels":
        label_quality(args)
    elif args.cmd == "teacher":
        train_teacher(args)
    elif args.cmd == "cost":
        append(args, epoch_cost(args))
    else:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        known = {*ARMS, "plain" + MATCHED, "kd" + MATCHED}
        if bad := [a for a in arms if a not in known and not a.startswith("kd_u:")]:
            raise SystemExit(f"unknown arm(s) {bad}; choose from {sorted(known)} or kd_u:CHOICE")
        if any(a != "ceiling" and not a.startswith("plain") for a in arms) and not Path(teacher_path(args)).is_file():
            raise SystemExit(f"no teacher at {teacher_path(args)}: run the 'teacher' step first, or pass --teacher")
        for arm in arms:
            append(args, run_arm(args, arm))
        print_table(args)


if __name__ == "__main__":
    main()
