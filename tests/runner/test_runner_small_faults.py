"""Issue 23, item 9: the files the runner creates get the user's umask; an empty store file is not written to."""

from __future__ import annotations

import os
import stat

import pytest
from runner_testlib import write_study

from sharplab.cli import main


@pytest.fixture
def umask():
    """Set the process umask for one test (and forget the file mode cached for it)."""
    import sharplab.io

    clear = getattr(getattr(sharplab.io, "file_mode", None), "cache_clear", lambda: None)
    before = os.umask(0o022)
    os.umask(before)

    def set_mask(mask: int) -> None:
        os.umask(mask)
        clear()

    yield set_mask
    os.umask(before)
    clear()


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_reports_run_files_and_checkpoints_get_the_users_umask(tmp_path, capsys, umask, mask, mode):
    from sharplab.runner.context import RunContext

    umask(mask)
    study = write_study(tmp_path / "s.toml", 'lab = "runner-toy"\nname = "t"\n[grid]\nseed = [0]\n')
    out = tmp_path / "o"
    assert main(["run", str(study), "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(out)]) == 0
    ctx = RunContext(tmp_path / "ck")
    ctx.save_checkpoint({"step": 1})
    ctx.save_checkpoint({"step": 2})  # the first one becomes the previous checkpoint
    files = [out / "report.md", out / "report.html", out / "studies" / "t.json", *out.glob("runs/*/run.json"),
             *out.glob("runs/*/history.jsonl"), *sorted((tmp_path / "ck").iterdir())]
    modes = {f.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert modes == {k: oct(mode) for k in modes}
    assert len(files) == 9, files  # with both checkpoints' checksums


@pytest.mark.parametrize("command", ["status", "export", "report"])
def test_an_empty_store_file_is_not_written_to(tmp_path, capsys, command):
    """A 0-byte results.sqlite (a store whose creation was cut off) is reported in one line and stays 0 bytes:
    a read command does not turn it into a schema."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"")
    assert main([command, str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "no results" in captured.err and captured.out == ""
    assert [(p.name, p.stat().st_size) for p in out.iterdir()] == [("results.sqlite", 0)]
