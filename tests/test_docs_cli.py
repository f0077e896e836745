"""The documentation's shell examples and the numbers the shipped study files quote.

* Every ```bash block preceded by ``<!-- doc-test: cli -->`` (README.md, docs/*.md): each ``sharplab ...``
  line runs, from a fresh working directory that sees the repository's ``examples/``, and exits 0; a
  trailing ``# prints: TEXT`` must appear in what the command printed.
* Every study file in ``examples/`` whose header says "N runs" records exactly N runs (``run --plan``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sharplab.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
MARKER = "<!-- doc-test: cli -->"
PRINTS = re.compile(r"#\s*prints:\s*(?P<text>.+?)\s*$")


def cli_lines(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line number, command, expected text or None)`` of the ``sharplab`` lines of marked bash blocks."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() != "```bash" or i == 0 or lines[i - 1].strip() != MARKER:
            continue
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            text = lines[j].strip()
            if text.startswith("sharplab "):
                expect = PRINTS.search(text)
                command = text.split("#", 1)[0].strip()
                out.append((j + 1, command, expect and expect["text"]))
            j += 1
    return out


CASES = [(p, n, c, e) for p in DOC_FILES if p.exists() for n, c, e in cli_lines(p)]


def test_marked_blocks_exist_and_the_parser_reads_them(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(f"{MARKER}\n```bash\nsharplab data list   # prints: toy\nls\n```\n```bash\nsharplab x\n```\n")
    assert cli_lines(doc) == [(3, "sharplab data list", "toy")]
    assert CASES, "no marked shell block in the docs"


@pytest.mark.parametrize(("path", "line", "command", "expect"), CASES,
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _, _ in CASES])
def test_documented_command_runs_and_prints_what_the_doc_says(path, line, command, expect, tmp_path,
                                                                monkeypatch, capsys):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 0, f"{path.name}:{line}: {command}"
    captured = capsys.readouterr()
    if expect is not None:
        assert expect in captured.out + captured.err, f"{path.name}:{line}: {command!r} did not print {expect!r}"


def quoted_run_counts() -> list[tuple[Path, int]]:
    out = []
    for path in sorted((ROOT / "examples").rglob("*.toml")):
        header = " ".join(ln.lstrip("# ") for ln in path.read_text().splitlines() if ln.startswith("#"))
        found = re.search(r"\b(\d[\d,]*) runs\b", header)
        if found:
            out.append((path, int(found[1].replace(",", ""))))
    return out


@pytest.mark.parametrize(("path", "count"), quoted_run_counts(),
                         ids=[str(p.relative_to(ROOT)) for p, _ in quoted_run_counts()])
def test_study_file_records_the_number_of_runs_its_header_quotes(path, count, tmp_path, capsys):
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--plan"]) == 0
    ids = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(ids) == count
