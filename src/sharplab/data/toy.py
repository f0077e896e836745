"""``toy``: the minimal synthetic two-feature setting, generated in milliseconds.

Generative model (every symbol is an option of :class:`ToyOptions`). Label ``y ~ Bernoulli(1/2)``,
sign ``s = 2y - 1``. The input ``x`` in R^d, ``d = easy_dims + hard_dims + noise_dims``, has

    x_j = s_easy * margin_easy + sigma_easy * z_j     for j in easy_dims  (coordinates 0 .. easy_dims-1)
    x_j = s_hard * margin_hard + sigma_hard * z_j     for j in hard_dims  (the next hard_dims coordinates)
    x_j = sigma_noise * z_j                           for the remaining noise_dims coordinates

with ``z_j ~ N(0, 1)`` i.i.d. In ``train``/``val``/``test`` the features are redundant,
``s_easy = s_hard = s``. In the decorrelated ``probe_train``/``probe_test`` splits ``s_easy`` and ``s_hard``
are independent and each of the four sign pairs occurs exactly ``n / 4`` times (``y = hard``).

With the defaults the easy feature has a large margin and little noise (margin/sigma = 20: a network
fits it first and almost surely) and the hard one a small margin and more noise (margin/sigma = 2: still
fit-able, Bayes error Phi(-2) = 2.3 % from one hard coordinate alone, but learned later and more slowly
by gradient descent) -- the simplicity-bias setting of Springer et al. (ICLR 2024, Sec. 4).
``meta["easy_dims"]`` and ``meta["hard_dims"]`` list the coordinates of each feature, so a model with
one pathway per feature can be built on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sharplab.data.core import (
    TwoFeatureData,
    check_count,
    check_elements,
    check_nonneg,
    check_positive,
    pair_table,
    register_dataset,
    rng_for,
    to_split,
)
from sharplab.errors import ConfigError


@dataclass(frozen=True)
class ToyOptions:
    n_train: int = 2000
    n_val: int = 500
    n_test: int = 2000
    n_probe_train: int = 1000
    n_probe_test: int = 2000
    easy_dims: int = 1
    hard_dims: int = 1
    noise_dims: int = 8
    margin_easy: float = 1.0
    sigma_easy: float = 0.05
    margin_hard: float = 0.2
    sigma_hard: float = 0.1
    sigma_noise: float = 0.1

    def __post_init__(self) -> None:
        check_positive(self, "n_train", "n_val", "n_test", "n_probe_train", "n_probe_test", "easy_dims",
                       "hard_dims")
        check_count(self, "noise_dims")
        check_nonneg(self, "sigma_easy", "sigma_hard", "sigma_noise", "margin_easy", "margin_hard")
        for n in ("n_probe_train", "n_probe_test"):
            if getattr(self, n) % 4:
                raise ConfigError(f"option {n}={getattr(self, n)} must be a multiple of 4 (2 x 2 sign pairs)")
        examples = self.n_train + self.n_val + self.n_test + self.n_probe_train + self.n_probe_test
        check_elements("toy data set", examples, self.dim)

    @property
    def dim(self) -> int:
        return self.easy_dims + self.hard_dims + self.noise_dims


def sample_toy(opt: ToyOptions, easy: np.ndarray, hard: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inputs [N, d] for given binary feature labels, following the generative model above."""
    n = len(easy)
    s_easy = (2 * easy - 1)[:, None].astype(np.float64)
    s_hard = (2 * hard - 1)[:, None].astype(np.float64)
    z = rng.standard_normal((n, opt.dim))
    e, h = opt.easy_dims, opt.hard_dims
    x = z * opt.sigma_noise
    x[:, :e] = s_easy * opt.margin_easy + opt.sigma_easy * z[:, :e]
    x[:, e:e + h] = s_hard * opt.margin_hard + opt.sigma_hard * z[:, e:e + h]
    return x


@register_dataset("toy", ToyOptions,
                  "synthetic: large-margin easy coordinate(s), small-margin noisy hard one(s)")
def load_toy(opt: ToyOptions, root: str | None, seed: int) -> TwoFeatureData:
    splits = {}
    for name in ("train", "val", "test"):
        rng = rng_for(seed, "toy", name)
        y = rng.integers(0, 2, getattr(opt, f"n_{name}"))
        splits[name] = to_split(sample_toy(opt, y, y, rng), y, y, y)
    for name in ("probe_train", "probe_test"):
        rng = rng_for(seed, "toy", name)
        easy, hard = pair_table(2, 2, getattr(opt, f"n_{name}") // 4, rng)
        splits[name] = to_split(sample_toy(opt, easy, hard, rng), hard, easy, hard)
    easy_dims = list(range(opt.easy_dims))
    hard_dims = list(range(opt.easy_dims, opt.easy_dims + opt.hard_dims))
    return TwoFeatureData(
        name="toy", splits=splits, num_classes=2, num_easy_classes=2, num_hard_classes=2,
        meta={"easy_dims": easy_dims, "hard_dims": hard_dims,
              "noise_dims": list(range(opt.easy_dims + opt.hard_dims, opt.dim)),
              "options": dict(opt.__dict__), "easy_feature": "large-margin sign", "hard_feature":
              "small-margin noisy sign"},
    )
