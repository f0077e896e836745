"""sharplab: Sharpness-Aware Minimization, and labs that show what it does.

Public entry points::

    from sharplab.optim import SAM, sam_grad

The package tunes glibc's allocator at import (see :mod:`sharplab._allocator`); set
``SHARPLAB_NO_MALLOC_TUNING=1`` to opt out.
"""

from sharplab._allocator import tune_allocator

__version__ = "0.1.0"

ALLOCATOR_SETTING = tune_allocator()

__all__ = ["__version__", "ALLOCATOR_SETTING"]
