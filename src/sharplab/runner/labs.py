"""The lab registry, owned by the runner: name -> config class + run function + report section.

The runner is a lower layer than the labs: it never imports a lab. A lab registers itself when its module
is imported, and whoever sits on top (the ``sharplab`` CLI, a notebook, a test) imports the labs it wants
(``import sharplab.labs; sharplab.labs.load_all()`` for the bundled ones). A lab is one module that calls
:func:`register_lab` at import:

.. code-block:: python

    from dataclasses import dataclass, field
    from sharplab.runner.labs import Lab, register_lab

    @dataclass(frozen=True)
    class MyConfig:
        lr: float = field(default=0.1, metadata={"min": 0.0})
        epochs: int = 3

    def run(cfg: MyConfig, ctx: RunContext) -> dict[str, float]:
        ...  # train, call ctx.log_metrics / ctx.save_checkpoint, return final metrics

    register_lab(Lab("my-lab", MyConfig, run, report=my_report_section))

and, for a bundled lab, one line in ``sharplab.labs.LAB_MODULES``. Config classes are frozen dataclasses
with a default for every field; a field's ``metadata`` may hold ``{"min": ..., "max": ..., "choices":
[...], "help": "..."}`` which the runner's validation enforces. ``seed`` is not a config field: the runner
passes it in the :class:`~sharplab.runner.context.RunContext`.

The registry remembers the module that registered each lab (:attr:`Lab.module`): a worker process
(``--jobs``, ``--nproc``) imports exactly that module by name to find the lab again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sharplab.errors import SharplabError
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
        module: the module whose import registers the lab (filled in by :func:`register_lab`).
        metrics: names of the final metrics ``run`` returns (a name ending in ``*`` stands for every
            name with that prefix); ``sharplab sweep`` refuses any other ``metric`` before training.
            Empty: not declared, not checked.
    """

    name: str
    config_cls: type
    run: Callable[[Any, Any], dict[str, float]]
    report: Callable[[list[Any], Any], None] | None = None
    description: str = ""
    module: str = ""
    metrics: tuple[str, ...] = ()

    def has_metric(self, name: str) -> bool:
        """Whether ``name`` is among the declared final metrics (always True when none are declared)."""
        if not self.metrics:
            return True
        return any(name == m or (m.endswith("*") and name.startswith(m[:-1])) for m in self.metrics)


LABS: Registry[Lab] = Registry("lab")


def register_lab(lab: Lab) -> Lab:
    """Add ``lab`` to :data:`LABS`, recording the calling module (a duplicate name raises ValueError)."""
    if not lab.module:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        lab = replace(lab, module=caller if caller != "__main__" else "")
    return LABS.add(lab.name, lab)


def get_lab(name: str) -> Lab:
    """The registered lab ``name``, or a one-line error listing the registered ones."""
    if name in LABS:
        return LABS.get(name)
    known = ", ".join(LABS.names()) or "none"
    raise SharplabError(f"unknown lab {name!r}; registered labs: {known} (see `sharplab labs`; a lab registers "
                        "when its module is imported, e.g. `import sharplab.labs; sharplab.labs.load_all()`)")


def import_lab_module(module: str) -> None:
    """Import a lab's module by name in a worker process (re-registering nothing already registered)."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise SharplabError(f"cannot import lab module {module!r} in the worker: {exc}".splitlines()[0]) from None
