"""Linear probing of learned representations, one probe per labelled feature.

.. code-block:: python

    from sharplab.probe import probe_model
    report = probe_model(model, load_two_feature("toy"))
    report.metrics()  # probe_error_easy, probe_error_hard, test_error, ...
"""

from sharplab.probe.evaluate import (
    FEATURES,
    ProbeReport,
    error_rate,
    probe_model,
    probe_representation,
    worst_group_error,
)
from sharplab.probe.extract import extract_features, predict
from sharplab.probe.linear import DEFAULT_CS, ProbeFit, fit_linear_probe

__all__ = [
    "DEFAULT_CS",
    "FEATURES",
    "ProbeFit",
    "ProbeReport",
    "error_rate",
    "extract_features",
    "fit_linear_probe",
    "predict",
    "probe_model",
    "probe_representation",
    "worst_group_error",
]
