"""yolo-kd: distilling train, stock train without a teacher, pass-through to Ultralytics, plugin modes."""

from __future__ import annotations

import csv
import subprocess
import sys
import types
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import pytest
from ultralytics.utils import YAML

from ultralytics_kd import cli

_spec = spec_from_file_location("_kd_cli_fixtures", Path(__file__).parent / "distill" / "conftest.py")
_fixtures = module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
data_yaml, teacher_pt = _fixtures.data_yaml, _fixtures.teacher_pt  # cached on disk: trained once per session
TINY_ARGS = ["imgsz=64", "batch=4", "nbs=4", "workers=0", "plots=False", "device=cpu", "amp=False", "epochs=1"]


def _header(run: Path) -> list[str]:
    with open(run / "results.csv") as f:
        return next(csv.reader(f))


def test_train_with_teacher_distills(data_yaml, teacher_pt, tmp_path):
    """Settings from a cfg= file (a copy of kd.yaml) plus key=value overrides reach KDTrainer."""
    kd_cfg = tmp_path / "my_kd.yaml"
    YAML.save(kd_cfg, {"teacher": str(teacher_pt), "kd_recipe": "cls_bce+ld", "kd_T": 3.0, "kd_teacher_check": False})
    cli.entrypoint(
        ["train", "model=yolov8n.yaml", f"data={data_yaml}", f"cfg={kd_cfg}", "kd_weights=[1.0,0.5]", *TINY_ARGS]
        + [f"project={tmp_path}", "name=kd"]
    )
    run = tmp_path / "kd"
    assert {"train/kdcls_loss", "train/kdld_loss", "val/kdcls_loss"} <= set(_header(run))
    args = YAML.load(run / "args.yaml")
    assert (args["teacher"], args["kd_T"], args["kd_weights"]) == (str(teacher_pt), 3.0, [1.0, 0.5])


def test_train_without_teacher_is_stock(data_yaml, tmp_path):
    cli.entrypoint(["train", "model=yolov8n.yaml", f"data={data_yaml}", *TINY_ARGS, f"project={tmp_path}", "name=p"])
    assert not any("kd_" in c for c in _header(tmp_path / "p"))
    assert "teacher" not in YAML.load(tmp_path / "p" / "args.yaml")


def test_train_argument_errors(data_yaml, teacher_pt):
    with pytest.raises(ValueError, match=r"\['kd_T'\] set but no teacher"):
        cli.entrypoint(["train", "model=yolov8n.yaml", f"data={data_yaml}", "kd_T=3"])
    with pytest.raises(SyntaxError, match="'kd_tmp' is not a valid YOLO argument"):
        cli.entrypoint(["train", "model=yolov8n.yaml", f"data={data_yaml}", f"teacher={teacher_pt}", "kd_tmp=3"])
    with pytest.raises(ValueError, match="kd_alpha=7.0 must be in"):
        cli.entrypoint(["train", "model=yolov8n.yaml", f"data={data_yaml}", f"teacher={teacher_pt}", "kd_alpha=7"])


@pytest.mark.parametrize(
    "args",
    [
        ["val", "model=best.pt", "data=d.yaml"],
        ["predict", "model=best.pt", "source=img dir/a.jpg"],  # a value with a space survives
        ["export", "model=best.pt", "format=onnx"],
        ["benchmark", "model=best.pt"],
        ["checks"],
        ["settings"],
    ],
)
def test_other_modes_pass_through_to_ultralytics(args, monkeypatch):
    import ultralytics.cfg as ucfg

    seen = []
    monkeypatch.setattr(ucfg, "entrypoint", lambda: seen.append(list(ucfg.ARGV)))
    before = ucfg.ARGV
    cli.entrypoint(args)
    assert seen == [["yolo", *args]] and ucfg.ARGV is before


def test_help_lists_kd_keys_then_ultralytics_help(capsys, monkeypatch):
    import ultralytics.cfg as ucfg

    seen = []
    monkeypatch.setattr(ucfg, "entrypoint", lambda: seen.append(list(ucfg.ARGV)))
    cli.entrypoint(["help"])
    assert "kd_recipe" in capsys.readouterr().out and seen == [["yolo", "help"]]


def test_plugin_modes_dispatch_lazily(monkeypatch):
    fake = types.ModuleType("_kd_fake_mode")
    fake.cli = lambda args: ("called", args)
    monkeypatch.setitem(sys.modules, "_kd_fake_mode", fake)
    monkeypatch.setitem(cli.PLUGIN_MODES, "fake", "_kd_fake_mode:cli")
    assert cli.entrypoint(["fake", "n=3", "out=some dir"]) == ("called", {"n": 3, "out": "some dir"})
    monkeypatch.setitem(cli.PLUGIN_MODES, "missing", "ultralytics_kd._no_such_module:cli")
    with pytest.raises(SystemExit, match="yolo-kd missing is not available.*ModuleNotFoundError"):
        cli.entrypoint(["missing"])
    assert set(cli.PLUGIN_MODES) >= {"synth", "demo", "report"}


def _console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed ``yolo-kd`` console script, as a shell or CI script would."""
    script = Path(sys.executable).parent / "yolo-kd"
    if not script.exists():
        pytest.skip("package not installed in this environment (pip install -e .)")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_console_script_runs(tmp_path):
    out = _console("version", cwd=tmp_path)
    assert out.returncode == 0 and "8.4" in out.stdout + out.stderr


def test_console_script_exits_0_after_success(data_yaml, teacher_pt, tmp_path):
    """``yolo-kd train ... && yolo-kd export ...`` must go on: success is status 0, not the returned metrics."""
    out = _console(
        "train", "model=yolov8n.yaml", f"data={data_yaml}", f"teacher={teacher_pt}", "kd_teacher_check=False",
        *TINY_ARGS, f"project={tmp_path}", "name=kd", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "kd" / "weights" / "last.pt").is_file() and "DetMetrics" not in out.stdout + out.stderr
    out = _console("synth", f"out={tmp_path / 'synth'}", "n=4", "imgsz=64", cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "synth" / "data.yaml").is_file(), out.stderr[-2000:]


def test_console_script_exits_1_on_bad_input(data_yaml, tmp_path):
    """Bad input: status 1, the message naming the fix on stderr, no traceback."""
    out = _console("train", "model=yolov8n.yaml", f"data={data_yaml}", "kd_T=3", cwd=tmp_path)
    assert out.returncode == 1
    assert "kd_T'] set but no teacher: add teacher=" in out.stderr and "Traceback" not in out.stderr


def test_unknown_kd_key_is_one_line_without_the_stock_help(data_yaml, teacher_pt, capfd):
    """The stock key check logs the whole `yolo` help before its error; a mistyped kd_* key gets one line instead."""
    for extra in ([f"teacher={teacher_pt}"], []):  # with a teacher, and without one (which would go to stock yolo)
        with pytest.raises(SyntaxError, match=r"'kd_tmp' is not a valid YOLO argument .*similar: \[.*'kd_T'"):
            cli.entrypoint(["train", "model=yolov8n.yaml", f"data={data_yaml}", *extra, "kd_tmp=3"])
    out = capfd.readouterr()  # the stock help goes through Ultralytics' logger, at the file-descriptor level
    assert "yolo TASK MODE ARGS" not in out.out + out.err  # the first line of Ultralytics' CLI help


def test_internal_errors_keep_their_traceback(monkeypatch):
    """A KeyError or TypeError from inside is a bug: main() lets it through; a bad value type stays a user error."""

    def broken(args=None):
        raise KeyError("internal")

    monkeypatch.setattr(cli, "entrypoint", broken)
    with pytest.raises(KeyError, match="internal"):
        cli.main()


def test_a_bad_value_type_is_a_user_error(data_yaml, teacher_pt, monkeypatch, capsys):
    args = ["yolo-kd", "train", "model=yolov8n.yaml", f"data={data_yaml}", f"teacher={teacher_pt}", "epochs=abc"]
    monkeypatch.setattr("sys.argv", args)
    assert cli.main() == 1
    assert "epochs" in capsys.readouterr().err
