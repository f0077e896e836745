r"""ESAM's sharpness-sensitive data selection (Du et al., ICLR 2022, sec. 3.2).

After the ascent, the per-example sharpness s_i = l_i(w + eps) - l_i(w) is measured with one no-grad
forward at w + eps, and the descent gradient is the mean gradient at w + eps of the examples with the
largest s_i only:

.. math:: g = \nabla \frac{1}{|S^+|} \sum_{i \in S^+} l_i(w + \epsilon),\qquad
          S^+ = \text{top-}\lceil\gamma B\rceil \text{ examples by } s_i .

The authors' code keeps the examples *strictly* above the ``int(gamma B)``-th largest value (one fewer
than intended, and none on ties); here exactly ``max(1, round(gamma B))`` examples are kept.
"""

from __future__ import annotations

import torch

from sharplab.optim.registry import check_number


class SharpestFraction:
    """Keep the fraction gamma of the batch with the largest sharpness (0.5 in the paper's CIFAR runs)."""

    def __init__(self, gamma: float = 0.5) -> None:
        self.gamma = check_number("esam", "gamma", gamma, 0, 1, lo_open=True)

    def count(self, batch: int) -> int:
        return max(1, min(batch, round(self.gamma * batch)))

    def pick(self, sharpness: torch.Tensor) -> torch.Tensor:
        """Indices of the ``count(B)`` sharpest examples, in batch order."""
        k = self.count(sharpness.shape[0])
        return torch.sort(torch.topk(sharpness, k).indices).values
