"""sharplab: Sharpness-Aware Minimization, and labs that show what it does.

Public entry points::

    from sharplab.optim import SAM, sam_grad, create

Importing sharplab changes nothing process-wide. ``sharplab.tune_allocator()`` is an explicit opt-in that
keeps freed memory in the process (glibc only; see :mod:`sharplab._allocator`), and
``sharplab.allocator_setting()`` reports what is in force.
"""

from sharplab._allocator import allocator_setting, tune_allocator

__version__ = "0.1.0"

__all__ = ["__version__", "allocator_setting", "tune_allocator"]
