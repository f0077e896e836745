"""The lab registry: name -> config class + run function + report section.

A lab is a study the runner can execute. Adding one is one module that calls :func:`register_lab`:

.. code-block:: python

    @dataclass(frozen=True)
    class MyConfig:
        lr: float = 0.1
        rho: float = 0.05
        epochs: int = 3

    def run(cfg: MyConfig, ctx: RunContext) -> dict[str, float]:
        ...  # train, call ctx.log_metrics / ctx.save_checkpoint, return final metrics

    register_lab(Lab("my-lab", MyConfig, run, report=my_report_section))

Config classes are frozen dataclasses with a default for every field; a field's ``metadata`` may hold
``{"min": ..., "max": ..., "choices": [...], "help": "..."}`` which the runner's validation enforces.
``seed`` is not a config field: the runner passes it in the :class:`~sharplab.runner.context.RunContext`.

The ``report`` callable receives the finished runs of this lab and a report builder (see
``sharplab.runner.report``) and adds tables and figures to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sharplab.registry import Registry


@dataclass(frozen=True)
class Lab:
    """A registered study.

    Attributes:
        name: registry name, used in study files (``lab = "..."``).
        config_cls: frozen dataclass of the lab's hyperparameters, each with a default.
        run: ``run(config, ctx) -> dict[str, float]`` final metrics; raise ``sharplab.errors.Diverged``
            on a non-finite loss.
        report: optional ``report(runs, builder)`` adding the lab's tables/figures to a report.
        description: one line for ``sharplab labs``.
    """

    name: str
    config_cls: type
    run: Callable[[Any, Any], dict[str, float]]
    report: Callable[[list[Any], Any], None] | None = None
    description: str = ""


LABS: Registry[Lab] = Registry("lab")


def register_lab(lab: Lab) -> Lab:
    return LABS.add(lab.name, lab)


def get_lab(name: str) -> Lab:
    from sharplab.labs import load_all

    load_all()
    return LABS.get(name)
