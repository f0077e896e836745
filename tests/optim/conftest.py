"""Optimizer tests compare implementations exactly, so they run in float64 (see docs/optim.md)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
