"""The documentation's examples run: doctests of the optimizer modules and every ```python block of
docs/*.md and README.md, as written, each in a fresh namespace and an empty working directory.

A block that cannot run here (a GPU, a data set, hours of compute) is preceded by a line
``<!-- skip-test: <reason> -->``; the reason is reported as the skip reason. Nothing else is skipped.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch

import sharplab.optim.functional
import sharplab.optim.sam

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
SKIP = re.compile(r"^<!--\s*skip-test:\s*(?P<reason>.+?)\s*-->$")


@pytest.mark.parametrize("module", [sharplab.optim.sam, sharplab.optim.functional])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line number, code, skip reason or None)`` for each ```python block of a Markdown file."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            before = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
            marker = SKIP.match(before)
            blocks.append((start + 1, "\n".join(lines[start + 1 : j]) + "\n", marker and marker["reason"]))
            i = j
        i += 1
    return blocks


CASES = [(path, line, code, reason) for path in DOC_FILES if path.exists()
         for line, code, reason in python_blocks(path)]


def test_block_parser_finds_blocks_and_skip_markers(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n```python\na = 1\n```\n\n<!-- skip-test: needs a GPU -->\n```python\nb = 2\n```\n"
                   "```bash\nls\n```\n")
    assert python_blocks(doc) == [(2, "a = 1\n", None), (7, "b = 2\n", "needs a GPU")]


@pytest.mark.parametrize(("path", "line", "code", "reason"), CASES,
                         ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _, _ in CASES])
def test_documentation_code_block_runs(path, line, code, reason, tmp_path, monkeypatch):
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    try:
        exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
