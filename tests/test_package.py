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
