"""benchmarks/kd_gain.py's table: which rows pair, and which dates it reads."""

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("kd_gain", Path(__file__).parents[1] / "benchmarks" / "kd_gain.py")
kd_gain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kd_gain)


def _row(run, seed, test_map, date, start_dir=None):
    row = {"run": run, "seed": seed, "test_map": test_map, "student": "s.yaml", "epochs": 20, "imgsz": 320}
    row.update(date=date, val_map=0, val_map50=0, test_map50=0, test_map_per_class={})
    return row | ({"start": "scratch:40", "start_dir": start_dir} if start_dir else {})


def test_continuations_pair_only_with_the_same_start():
    """A run continued from one checkpoint is compared with the plain run continued from that checkpoint, not with the
    plain run of the same seed continued from another session's checkpoint."""
    plain = [_row("scratch", 0, 0.50, "d", "a0"), _row("scratch", 1, 0.48, "d", "b1")]
    same = [_row("kd", 0, 0.52, "d", "a0"), _row("kd", 1, 0.49, "d", "b1")]
    assert kd_gain.paired_difference(same, plain).startswith("+1.5 [")  # (+2.0 + 1.0) / 2
    other = [_row("kd", 0, 0.52, "d", "a0"), _row("kd", 1, 0.49, "d", "a1")]
    assert kd_gain.paired_difference(other, plain) == "+2.0 (1 seed)"
    assert kd_gain.paired_difference([_row("kd", 0, 0.51, "d")], [_row("scratch", 0, 0.50, "d")]) == "+1.0 (1 seed)"


def test_table_reads_the_dates_asked(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    rows = [_row("scratch", 0, 0.40, "2026-12-01T10:00"), _row("scratch", 0, 0.45, "2026-12-06T10:00")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kd_gain.print_table(path, until="2026-12-05")
    assert "0.400 (s0)" in capsys.readouterr().out
    kd_gain.print_table(path, since="2026-12-06")
    assert "0.450 (s0)" in capsys.readouterr().out
    kd_gain.print_table(path, since="2026-12-07")
    assert "s0" not in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_date_flags_parse(flag):
    assert getattr(kd_gain.parse_args(["--table", flag, "2026-12-06"]), flag[2:]) == "2026-12-06"
