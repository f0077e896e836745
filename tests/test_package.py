import subprocess
import sys

import sharplab
from sharplab.cli import main


def test_version_matches_cli(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert sharplab.__version__ in capsys.readouterr().out


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "sharplab", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "usage: sharplab" in out.stdout


def test_allocator_setting_is_reported():
    assert isinstance(sharplab.ALLOCATOR_SETTING, str) and sharplab.ALLOCATOR_SETTING


def test_every_command_module_registers_its_commands():
    from sharplab.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    expected = {"demo", "run", "status", "report", "export", "sweep", "labs", "data", "diag-net", "relu-1d",
                "convergence", "feature-probe", "mechanisms"}
    assert expected <= set(sub.choices)


def test_user_errors_print_one_line_and_exit_2(capsys, tmp_path):
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: study file") and "not found" in err[0]
