"""Non-terminal progress: one line per 10 %, none at all for a job shorter than ``QUIET_FOR`` seconds."""

from __future__ import annotations

import io

import pytest

from sharplab import progress as progress_mod
from sharplab.progress import QUIET_FOR, LineProgress, progress


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    return c


def test_a_short_job_prints_nothing(clock):
    out = io.StringIO()
    bar = progress(range(100), desc="short", file=out)  # a StringIO is not a terminal
    assert isinstance(bar, LineProgress)
    for _ in bar:
        clock.t += (QUIET_FOR - 1) / 100  # the whole job takes 9 s
    assert out.getvalue() == ""


def test_a_long_job_prints_a_line_per_ten_percent_after_the_quiet_start(clock):
    out = io.StringIO()
    bar = LineProgress(total=100, desc="long", file=out)
    for _ in range(100):
        clock.t += 1.0  # 100 s: the first 10 s are quiet (the 10 % mark falls at 10 s, printed)
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("long:  10% (10/100 it), 10 s")
    assert [ln.split("%")[0].split()[-1] for ln in lines] == [str(p) for p in range(10, 101, 10)]


def test_the_quiet_start_can_be_switched_off(clock):
    out = io.StringIO()
    bar = LineProgress(total=4, desc="x", file=out, quiet_for=0.0, every=25.0)
    for _ in range(4):
        bar.update(1)
    assert len(out.getvalue().splitlines()) == 4
