"""Data sets with two labelled features (an *easy* and a *hard* one) and their readers.

    >>> from sharplab.data import load_two_feature
    >>> data = load_two_feature("toy", seed=0)
    >>> sorted(data.splits), data.input_shape, data.meta["easy_dims"], data.meta["hard_dims"]
    (['probe_test', 'probe_train', 'test', 'train', 'val'], (10,), [0], [1])

Registered sets (:func:`list_datasets`): ``toy``, ``fmnist-mnist`` (the offline default for real runs),
``cifar-mnist``, ``celeba``, ``waterbirds``, ``pacs``, ``vlcs``, ``officehome``. See
:mod:`sharplab.data.sources` for where data are looked up and :mod:`sharplab.data.download` for getting them.
"""

from sharplab.data import domainbed, dominoes, spurious, toy  # noqa: F401  (register the data sets)
from sharplab.data.core import (
    DATASETS,
    DECORRELATED_SPLITS,
    SPLITS,
    TwoFeatureData,
    TwoFeatureSplit,
    balanced_pairs,
    list_datasets,
    load_two_feature,
    make_options,
)
from sharplab.data.label_noise import symmetric_label_noise

__all__ = [
    "DATASETS",
    "DECORRELATED_SPLITS",
    "SPLITS",
    "TwoFeatureData",
    "TwoFeatureSplit",
    "balanced_pairs",
    "list_datasets",
    "load_two_feature",
    "make_options",
    "symmetric_label_noise",
]
