"""What the implicit-bias commands share: their lists of configurations run through the runner, and the
printed table / JSON lines.

``sharplab diag-net``, ``relu-1d`` and ``convergence`` build a list of ``(config, seed)`` runs from their
flags (not always a cartesian grid), run it as one study into ``--out`` (results store, one folder per
run: a second identical command finds every run finished and runs nothing) and print their table from
the store's records, so the printed numbers are the stored ones whether they were computed now or earlier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def quiet(args: argparse.Namespace) -> bool:
    """No progress bars: ``--quiet``, or the ``CI`` environment variable."""
    return bool(args.quiet or os.environ.get("CI"))


@dataclass
class LabRuns:
    """The store's records of one command's runs: ``get(cfg, seed)``; ``counts`` by final status."""

    lab: str
    records: dict[str, Any]
    counts: Counter
    out: Path

    def get(self, cfg: Any, seed: int) -> Any:
        """The record of run ``(cfg, seed)``."""
        from sharplab.runner.config import run_spec

        return self.records[run_spec(self.lab, cfg, seed).run_id]

    def exit_code(self) -> int:
        """1 (with the count on stderr) when a run failed, else 0."""
        from sharplab.cli.deep_net import failed_runs

        return failed_runs(self.counts, len(self.records), self.out)


def run_configs(lab: str, name: str, runs: Sequence[tuple[Any, int]], out: Path,
                args: argparse.Namespace) -> LabRuns:
    """Run ``runs`` (``(config, seed)`` pairs) as study ``name`` of ``lab`` into ``out``; the finished
    ones are skipped. One stderr line says how many runs were new."""
    from sharplab.runner.config import configs_study
    from sharplab.runner.execute import run_study
    from sharplab.runner.single_run import RunOptions
    from sharplab.runner.store import FINISHED, open_store

    study = configs_study(lab, name, runs)
    ids = {s.run_id for s in study.runs()}
    with open_store(out) as store:
        before = {r.run_id for r in store.runs(history=False) if r.status in FINISHED and r.run_id in ids}
    counts = run_study(study, out, options=RunOptions(quiet=quiet(args), threads=args.threads))
    with open_store(out, create=False) as store:
        records = {r.run_id: r for r in store.runs() if r.run_id in ids}
    print(f"{name}: {len(ids)} runs in {out} ({len(ids) - len(before)} new, {len(before)} finished earlier)",
          file=sys.stderr)
    return LabRuns(lab, records, counts, out)


def shown_config(cfg: Any, hidden: Sequence[str] = ()) -> dict[str, Any]:
    """The config's fields as the commands print them, less ``hidden`` (fields that only steer the runner)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(cfg).items() if k not in hidden}


def emit(records: list[dict[str, Any]], args: argparse.Namespace, columns: Sequence[str],
         statuses: Sequence[str] | None = None) -> None:
    """One JSON line per record (``--json``), else a right-aligned table of ``columns``; the ``status``
    column reads ``ok`` / ``diverged`` from the records, or ``statuses`` where given (``failed``)."""
    if args.json:
        for rec in records:
            print(json.dumps(rec, default=float), flush=True)
        return

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def cell(k: int, rec: dict[str, Any], c: str) -> str:
        if c == "status":  # a diverged run is never shown as a normal result
            if statuses is not None and statuses[k] not in ("done", "diverged"):
                return statuses[k]
            return "diverged" if rec.get("diverged") else "ok"
        return fmt(rec.get(c, ""))

    table = [[cell(k, rec, c) for c in columns] for k, rec in enumerate(records)]
    widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in table:
        print("  ".join(text.rjust(w) for text, w in zip(row, widths)))


def note_diverged(command: str, records: list[dict[str, Any]]) -> None:
    """One stderr line when some runs diverged (their rows carry ``diverged: true``, status 'diverged')."""
    n = sum(bool(r.get("diverged")) for r in records)
    if n:
        print(f"{command}: {n} of {len(records)} runs diverged (non-finite loss): marked 'diverged', "
              "left out of the figures", file=sys.stderr)


def write_results(out: Path, records: list[dict[str, Any]]) -> None:
    """``out/results.json``: the printed records, as one JSON list."""
    from sharplab.io import atomic_write_json

    atomic_write_json(out / "results.json", records)
