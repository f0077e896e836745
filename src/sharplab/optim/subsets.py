"""Choosing which parameters SAM perturbs.

Last-layer SAM (LSAM, Springer et al., ICLR 2024, sec. 4.3) perturbs only the final linear layer:
``SAM(model.parameters(), ..., perturb=last_layer_params(model))`` or
``sam_grad(..., perturb=last_layer_params(model))``.
"""

from __future__ import annotations

from torch import nn

from sharplab.errors import SharplabError


def last_layer_params(model: nn.Module) -> list:
    """Parameters of the model's final linear layer: ``model.head`` if it exists, else the last
    ``nn.Linear`` in module order."""
    core = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    head = getattr(core, "head", None)
    if not isinstance(head, nn.Linear):
        linears = [mod for mod in core.modules() if isinstance(mod, nn.Linear)]
        if not linears:
            raise SharplabError("last-layer SAM needs a final nn.Linear (model.head or any Linear layer)")
        head = linears[-1]
    return list(head.parameters())
