"""Run infrastructure shared by every lab: run contexts, configs, the results store, resume, reports."""

from sharplab.runner.context import RunContext

__all__ = ["RunContext"]
