import subprocess
import sys

import pytest

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


RSS_AFTER_FREE = """
import sys
import numpy as np
import sharplab
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
if sys.argv[1] == "tune":
    sharplab.tune_allocator()
a = np.ones(512 * 2**20 // 8)
del a
print(sharplab.allocator_setting(), "|", rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (glibc malloc)")
def test_import_leaves_the_allocator_alone_and_tuning_is_opt_in():
    """After a plain import a freed 512 MiB block goes back to the OS; only tune_allocator() keeps it."""
    def run(mode):
        out = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE, mode], capture_output=True, text=True, check=True)
        setting, rss = out.stdout.rsplit("|", 1)
        return setting.strip(), float(rss)

    plain, tuned = run("plain"), run("tune")
    assert plain[0] == "glibc defaults" and plain[1] < 300
    if tuned[0].startswith("mallopt"):
        assert tuned[1] > 500


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


def test_every_module_imports():
    """A module no test imports directly (a split that left an import behind) still fails here."""
    import importlib
    import pkgutil

    import sharplab

    names = [m.name for m in pkgutil.walk_packages(sharplab.__path__, "sharplab.") if not m.name.endswith("__main__")]
    assert len(names) > 50
    for name in names:
        importlib.import_module(name)
