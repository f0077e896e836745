"""Check, before anything is written, that the devices a study's runs ask for exist on this machine."""

from __future__ import annotations

from collections.abc import Iterable

from sharplab.errors import SharplabError
from sharplab.runner.config import RunSpec


def check_devices(specs: Iterable[RunSpec]) -> None:
    """One-line SharplabError when a run asks for ``device = "cuda"`` and no CUDA GPU is visible.

    Called by the commands before the results store is created, so a study that cannot run on this
    machine leaves no output folder behind (the runner checks again when each run starts).
    """
    wanted = {str(s.config.get("device", "cpu")) for s in specs}
    if "cuda" not in wanted:
        return
    import torch

    if not torch.cuda.is_available():
        raise SharplabError("the study asks for device = 'cuda' but no CUDA GPU is visible; use --device cpu "
                            "or auto (--set device=cpu in a study file: device = \"cpu\")")
