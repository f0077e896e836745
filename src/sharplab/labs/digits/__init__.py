"""The digits lab (``lab = "digits"``): an MLP on scikit-learn's 8x8 handwritten digits, with SGD or SAM.

Data: ``sklearn.datasets.load_digits`` (1,797 images, 64 pixels scaled to [0, 1], 10 classes; ships with
scikit-learn, no download), split once by a fixed permutation into 1,347 training and 450 test images.
Model: :class:`sharplab.models.MLP` with ``depth`` hidden layers of ``width`` units.

Optimizer: ``optimizer = "sgd"`` is ``torch.optim.SGD``; ``"sam"`` is :class:`sharplab.optim.SAM` with the
same SGD as base (Foret et al., 2021, arXiv:2010.01412):

    eps = rho * g / ||g||_2,   g = grad L_B(w);      w <- w - lr * SGD-momentum(grad L_B(w + eps)).

DDP (``sharplab run --nproc N``): each rank takes its contiguous 1/N of every global batch
(``batch_size`` is the global batch and must divide by N). With ``sync_ascent = true`` the ascent gradient
is averaged over ranks before the norm, which equals a single process with the same global batch; with
``sync_ascent = false`` each rank perturbs with its own gradient, i.e. m-sharpness with
m = batch_size / N (Andriushchenko & Flammarion, 2022), which is a different algorithm.
"""

from sharplab.labs.digits.config import N_TEST, N_TOTAL, N_TRAIN, DigitsConfig
from sharplab.labs.digits.report import report
from sharplab.labs.digits.train import load_digits_tensors, run
from sharplab.runner.labs import Lab, register_lab

__all__ = ["N_TEST", "N_TOTAL", "N_TRAIN", "DigitsConfig", "load_digits_tensors", "report", "run"]

register_lab(Lab("digits", DigitsConfig, run, report,
                 "MLP on scikit-learn's 8x8 digits with SGD or SAM (quick, offline, DDP-capable)",
                 metrics=("train_loss", "test_loss", "test_error", "val_loss", "val_error")))
