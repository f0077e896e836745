"""Labs: one package per study, each registering itself with :data:`sharplab.runner.labs.LABS` at import.

The registry and its lookups (:class:`~sharplab.runner.labs.Lab`, :func:`~sharplab.runner.labs.register_lab`,
:func:`~sharplab.runner.labs.get_lab`) live in :mod:`sharplab.runner.labs`, the one import path for them:
the runner is a lower layer and never imports a lab. Whoever sits on top (the CLI, a notebook, a test)
calls :func:`load_all` to register the bundled labs. A new bundled lab is a package calling
``register_lab(Lab(...))`` plus one line in :data:`LAB_MODULES`.
"""

__all__ = ["LAB_MODULES", "load_all"]

# Lab modules, imported by load_all(); each calls register_lab(...) at import.
LAB_MODULES: tuple[str, ...] = (
    "sharplab.labs.digits",
    "sharplab.labs.implicit_bias",
    "sharplab.labs.feature_quality",
    "sharplab.labs.deep_net",
)


def load_all() -> None:
    """Import every bundled lab module (idempotent)."""
    import importlib

    for name in LAB_MODULES:
        importlib.import_module(name)
