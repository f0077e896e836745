"""Run infrastructure shared by every lab: run contexts, study files, the results store, resume, reports.

Programmatic use (what ``sharplab run`` + ``sharplab report`` do)::

    from sharplab.runner import build_report, load_study, run_study

    counts = run_study(load_study("examples/quick.toml"), "runs/quick")
    paths = build_report("runs/quick").write("runs/quick")   # {"html": ..., "markdown": ...}
"""

__all__ = ["RunContext", "RunOptions", "ReportBuilder", "ResultsStore", "build_report", "load_study",
           "run_study"]


def __getattr__(name: str):  # lazy: importing the store or config modules does not load torch
    if name == "RunContext":
        from sharplab.runner.context import RunContext

        return RunContext
    if name == "RunOptions":
        from sharplab.runner.single_run import RunOptions

        return RunOptions
    if name == "run_study":
        from sharplab.runner.execute import run_study

        return run_study
    if name in ("ReportBuilder", "build_report"):
        from sharplab.runner import report

        return getattr(report, name)
    if name == "ResultsStore":
        from sharplab.runner.store import ResultsStore

        return ResultsStore
    if name == "load_study":
        from sharplab.runner.config import load_study

        return load_study
    raise AttributeError(f"module 'sharplab.runner' has no attribute {name!r}")
