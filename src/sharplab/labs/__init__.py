"""Labs: one module per study, each registered with :data:`sharplab.labs.registry.LABS`.

Importing this package imports every lab module so that the registry is complete.
"""

from sharplab.labs.registry import LABS, Lab, get_lab, register_lab

__all__ = ["LABS", "Lab", "get_lab", "register_lab", "load_all"]

# Lab modules, imported by load_all(); each calls register_lab(...) at import.
LAB_MODULES: tuple[str, ...] = (
    "sharplab.labs.digits",
    "sharplab.labs.implicit_bias",
    "sharplab.labs.feature_quality",
)


def load_all() -> None:
    """Import every lab module (idempotent)."""
    import importlib

    for name in LAB_MODULES:
        importlib.import_module(name)
