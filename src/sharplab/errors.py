"""Exceptions for user-facing problems.

Every error meant for a user is a :class:`SharplabError` whose message is one line naming the problem
and the fix. The CLI prints it as ``error: <message>`` and exits with code 2, never a traceback.
"""

from __future__ import annotations


class SharplabError(ValueError):
    """A problem with the user's input or environment; the message says what to change."""


class ConfigError(SharplabError):
    """A configuration value is unknown, of the wrong type, or out of range."""


class DataNotFoundError(SharplabError):
    """A data set is not on disk; the message says how to get it."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss or gradient; ``step`` says where (``None``: not known).

    The message is ``non-finite <what> at step <step>``: ``what`` names the quantity, not the step.
    """

    def __init__(self, step: int | None, what: str = "loss") -> None:
        super().__init__(f"non-finite {what}" + ("" if step is None else f" at step {step}"))
        self.step = step
        self.what = what
