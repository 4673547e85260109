"""benchmarks/unlabeled.py: the split rule (L = every k-th training image by sorted name, U the rest without labels)
and the table's share of the plain-to-ceiling gap."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

_path = Path(__file__).parents[1] / "benchmarks" / "unlabeled.py"
sys.path.insert(0, str(_path.parent))
_spec = importlib.util.spec_from_file_location("unlabeled_bench", _path)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_split_links_every_kth_image_with_labels_and_hides_the_rest(tmp_path):
    from ultralytics_kd.data.synth import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "s", n=14, imgsz=32, val_frac=0.15, test_frac=0)
    args = SimpleNamespace(data=str(data), every=4, root=str(tmp_path / "splits"))
    data_l = bench.make_split(args)
    train = sorted((data.parent / "images" / "train").glob("*.png"))
    out = data_l.parent
    assert sorted(p.name for p in (out / "L/images/train").iterdir()) == [p.name for p in train[::4]]
    assert sorted(p.name for p in (out / "L/labels/train").iterdir()) == [p.stem + ".txt" for p in train[::4]]
    kept = {p.name for p in train[::4]}
    assert sorted(p.name for p in (out / "U/images").iterdir()) == [p.name for p in train if p.name not in kept]
    assert not list((out / "U").rglob("*.txt"))  # no label travels with U
    assert json.loads((out / "split.json").read_text())["L"] == len(train[::4])


def _kd_u_line(tmp_path, capsys, arms: tuple[str, ...], by_seed: list[tuple[float, ...]]) -> str:
    """The table's kd_u line for rows of ``arms`` with one tuple of test mAPs per seed."""
    out = tmp_path / "r.jsonl"
    rows = [
        {"arm": arm, "student": "s.yaml", "seed": seed, "epochs": 40, "imgsz": 320, "split": "x", "test_map": v}
        for seed, vals in enumerate(by_seed)
        for arm, v in zip(arms, vals)
    ]
    out.write_text("\n".join(json.dumps(r) for r in rows))
    bench.print_table(SimpleNamespace(out=str(out)))
    return next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| kd_u"))


def test_table_reports_the_share_of_the_gap(tmp_path, capsys):
    line = _kd_u_line(tmp_path, capsys, ("plain", "kd_u", "ceiling"), [(0.30, 0.36, 0.40), (0.32, 0.38, 0.42)])
    assert "+6.0 [" in line and line.rstrip().endswith("60 % |")  # (0.37 - 0.31) / (0.41 - 0.31)


def test_plain_counts_as_the_better_of_its_two_schedules(tmp_path, capsys):
    """plain@steps (at kd_u's step count) beats plain at 40 epochs: kd_u's difference and share are taken to it."""
    arms = ("plain", "plain@steps", "kd_u", "ceiling")
    line = _kd_u_line(tmp_path, capsys, arms, [(0.30, 0.34, 0.38, 0.40), (0.32, 0.34, 0.38, 0.42)])
    assert "+4.0 [" in line and line.rstrip().endswith("57 % |")  # (0.38 - 0.34) / (0.41 - 0.34)


def test_pseudo_labels_match_real_boxes_one_to_one_by_class_and_iou(tmp_path):
    """Two real boxes; three pseudo-boxes: one on the first (IoU 1), a second on the same box (a duplicate, unmatched),
    one of the wrong class on the second. One match: precision 1/3, recall 1/2."""
    real, pseudo = tmp_path / "real.txt", tmp_path / "pseudo.txt"
    real.write_text("0 0.25 0.25 0.2 0.2\n1 0.75 0.75 0.2 0.2\n")
    pseudo.write_text("0 0.25 0.25 0.2 0.2\n0 0.26 0.25 0.2 0.2\n0 0.75 0.75 0.2 0.2\n")
    assert bench.matched(bench._boxes(pseudo), bench._boxes(real)) == 1
    assert bench.matched(bench._boxes(tmp_path / "none.txt"), bench._boxes(real)) == 0  # no file: no box
    shifted = tmp_path / "shifted.txt"
    shifted.write_text("0 0.35 0.25 0.2 0.2\n")  # IoU 1/3 with the first real box: below 0.5
    assert bench.matched(bench._boxes(shifted), bench._boxes(real)) == 0


def test_cost_rows_print_their_ratio_to_the_floor_and_stay_out_of_the_arms(tmp_path, capsys):
    """A cost row (kd_u 90 ms per image, plain 50, teacher 25: 1.80x plain, floor 1.50x) prints as one line, 1.20x its
    floor, and opens no table of its own."""
    cost = {"arm": "cost", "student": "s.yaml", "plain_img_s": 0.05, "kd_u_img_s": 0.09, "teacher_img_s": 0.025}
    cost |= {"ratio": 1.8, "floor": 1.5, "split": "x", "seed": 0, "epochs": 2, "imgsz": 160, "date": "2026-12-07T12:00"}
    plain = {"arm": "plain", "student": "s.yaml", "seed": 0, "epochs": 40, "imgsz": 320, "split": "x", "test_map": 0.3}
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps(cost) + "\n" + json.dumps(plain))
    bench.print_table(SimpleNamespace(out=str(out)))
    text = capsys.readouterr().out
    assert "kd_u 90 ms per image, 1.80x a plain epoch" in text and "floor 1.50x" in text and "1.20x its floor" in text
    assert "s.yaml, 2 epochs" not in text and text.count("### ") == 1  # no table for the cost row's setting


def test_another_teacher_gets_its_own_table_sharing_the_teacher_free_arms(tmp_path, capsys):
    """kd_u rows made with a second teacher of the split (tag 'long') form their own table; plain, plain@steps and
    ceiling, which no teacher takes part in, are the split's own rows there too, while kd_u and kd@steps are that
    teacher's alone."""
    base = {"student": "s.yaml", "epochs": 40, "imgsz": 320, "split": "x"}
    own = [("plain", 0.20, 0.22), ("plain@steps", 0.30, 0.32), ("ceiling", 0.40, 0.42), ("kd_u", 0.36, 0.38)]
    own += [("kd@steps", 0.35, 0.35)]
    long = [("kd_u", 0.39, 0.41), ("kd@steps", 0.37, 0.37)]
    rows = [{**base, "arm": a, "seed": s, "test_map": v} for a, *vs in own for s, v in enumerate(vs)]
    tagged = {**base, "teacher": "long"}
    rows += [{**tagged, "arm": a, "seed": s, "test_map": v} for a, *vs in long for s, v in enumerate(vs)]
    out = tmp_path / "r.jsonl"
    out.write_text("\n".join(json.dumps(r) for r in rows))
    bench.print_table(SimpleNamespace(out=str(out)))
    text = capsys.readouterr().out
    own_table, _, long_table = text.partition(", teacher long")
    assert text.count("### ") == 2 and "| kd_u | 2 | 0.370 |" in own_table
    kd_u = next(x for x in long_table.splitlines() if x.startswith("| kd_u"))
    assert kd_u.startswith("| kd_u | 2 | 0.400 |") and "+9.0 [" in kd_u  # against plain@steps
    assert "+3.0 [" in kd_u  # against its own kd@steps (0.37), not the split teacher's (0.35)
    assert kd_u.rstrip().endswith("90 % |")  # (0.40 - 0.31) / (0.41 - 0.31): the shared plain and ceiling
    assert "| plain@steps | 2 | 0.310 |" in long_table and "| plain | 2 | 0.210 |" in long_table


def test_a_changed_schedule_gets_its_own_table_and_pairs_within_it(tmp_path, capsys):
    """Continuations run with --set (stock settings in every arm, e.g. a lower lr0) are a changed baseline: their kd_u
    pairs with the plain@steps of the same schedule, never with the stock-schedule rows of the same start."""
    base = {"student": "s.yaml", "epochs": 20, "imgsz": 320, "split": "x", "start": "plain:40"}
    stock = [("plain@steps", 0.40, 0.40), ("kd_u", 0.39, 0.41)]
    low = [("plain@steps", 0.30, 0.32), ("kd_u", 0.35, 0.36)]
    rows = [{**base, "arm": a, "seed": s, "test_map": v} for a, *vs in stock for s, v in enumerate(vs)]
    changed = {**base, "train_set": ["lr0=0.0005", "warmup_epochs=0"]}
    rows += [{**changed, "arm": a, "seed": s, "test_map": v} for a, *vs in low for s, v in enumerate(vs)]
    out = tmp_path / "r.jsonl"
    out.write_text("\n".join(json.dumps(r) for r in rows))
    bench.print_table(SimpleNamespace(out=str(out)))
    text = capsys.readouterr().out
    tables = text.split("### ")[1:]
    assert len(tables) == 2 and sum("from each seed's plain:40 best.pt, with lr0=0.0005" in t for t in tables) == 1
    low_table, stock_table = sorted(tables, key=lambda t: "with lr0" not in t)
    assert next(x for x in stock_table.splitlines() if x.startswith("| kd_u")).startswith("| kd_u | 2 | 0.400 | ")
    kd_u = next(x for x in low_table.splitlines() if x.startswith("| kd_u"))
    assert kd_u.startswith("| kd_u | 2 | 0.355 |") and "+4.5 [" in kd_u  # against its own plain@steps (0.31)
