"""Sharpness measures of a trained model, usable on any ``nn.Module`` and loss.

    >>> import torch, torch.nn.functional as F
    >>> from sharplab.sharpness import hessian_eigenvalues, hessian_trace, m_sharpness
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> top = hessian_eigenvalues(model, F.cross_entropy, x, y, k=2)   # largest first
    >>> s = m_sharpness(model, F.cross_entropy, x, y, rho=0.1, m=8, steps=20)
    >>> tr, se = hessian_trace(model, F.cross_entropy, x, y, samples=10)

* :func:`hessian_eigenvalues` -- top-k eigenvalues of the Hessian of the mean loss (Lanczos or power
  iteration with deflation, Hessian-vector products with ``torch.func``);
* :func:`hessian_trace` -- Hutchinson's estimator with its standard error;
* :func:`m_sharpness` -- the worst-case L2 m-sharpness of the official ``eval_sharpness.py``
  (Andriushchenko & Flammarion, ICML 2022).

All measures evaluate the model in eval mode (BatchNorm running statistics, no dropout) and leave its
parameters, buffers and mode unchanged.
"""

from sharplab.sharpness.hessian import hessian_eigenvalues, hessian_trace, hvp_fn
from sharplab.sharpness.msharpness import m_sharpness

__all__ = ["hessian_eigenvalues", "hessian_trace", "hvp_fn", "m_sharpness"]
