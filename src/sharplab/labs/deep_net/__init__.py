"""The ``deep-net`` lab: the deep-network studies of *Towards Understanding SAM* (Andriushchenko &
Flammarion, ICML 2022; code github.com/tml-epfl/understanding-sam, ``deep_nets/``).

One run (:class:`DeepNetConfig`) trains a PreAct ResNet with SGD-momentum and one weight-perturbation
method (ERM, random, n-SAM, m-SAM, USAM), optionally switching method at an epoch (fine-tuning), with
symmetric label noise, and records per-epoch errors (clean / noisy training examples apart), the
gradient norm, and at the end the sharpness measures of :mod:`sharplab.sharpness`. The studies of
``sharplab deep-net STUDY`` (:mod:`sharplab.labs.deep_net.studies`) are grids of such runs.
"""

from __future__ import annotations

from sharplab.labs.deep_net.config import METHODS, DeepNetConfig
from sharplab.labs.deep_net.report import report
from sharplab.labs.deep_net.train import run
from sharplab.runner.labs import Lab, register_lab

__all__ = ["METHODS", "DeepNetConfig", "run"]

register_lab(Lab("deep-net", DeepNetConfig, run, report,
                 "PreAct ResNet with ERM / random / n-SAM / m-SAM / USAM: m-sharpness, fine-tuning, label noise"))
