"""Shared test setup: deterministic, 2 threads, no progress bars, never the network."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CI", "true")  # quiet progress bars
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
