"""Compatibility alias: the lab registry lives in :mod:`sharplab.runner.labs` (the runner owns it)."""

from sharplab.runner.labs import LABS, Lab, register_lab

__all__ = ["LABS", "Lab", "register_lab", "get_lab"]


def get_lab(name: str) -> Lab:
    """The lab ``name`` after importing every bundled lab module."""
    from sharplab.labs import get_lab as _get

    return _get(name)
