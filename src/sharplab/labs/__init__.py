"""Labs: one module per study, each registered with :data:`sharplab.runner.labs.LABS` at import.

The runner never imports a lab; the top layer (the CLI) calls :func:`load_all` to register the bundled
ones. A new bundled lab is a module calling ``register_lab(Lab(...))`` plus one line in
:data:`LAB_MODULES`.
"""

from sharplab.runner.labs import LABS, Lab, register_lab

__all__ = ["LABS", "Lab", "get_lab", "register_lab", "load_all"]

# Lab modules, imported by load_all(); each calls register_lab(...) at import.
LAB_MODULES: tuple[str, ...] = (
    "sharplab.labs.digits",
    "sharplab.labs.implicit_bias",
    "sharplab.labs.feature_quality",
    "sharplab.labs.deep_net",
)


def load_all() -> None:
    """Import every lab module (idempotent)."""
    import importlib

    for name in LAB_MODULES:
        importlib.import_module(name)


def get_lab(name: str) -> Lab:
    """The lab ``name``, after :func:`load_all`."""
    from sharplab.runner.labs import get_lab as _get

    load_all()
    return _get(name)
