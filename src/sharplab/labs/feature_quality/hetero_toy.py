"""``toy-hetero``: the lab's toy with heterogeneous easy-feature margins, where importance weighting shows.

On the plain toy every training example has the same easy margin, so once the easy pathway fits them all
their loss derivatives ``|sigmoid(f_i) - y_i|`` are about equal and SGD's importance weights are nearly
uniform (Gini ~0.04): the Lorenz curves of the study's Figure 3 are two diagonals. Here example ``i`` of
``train``/``val``/``test`` has easy margin ``margin_easy * a_i`` with ``a_i`` log-uniform on
``[easy_scale_min, 1]``: the examples with a small easy margin keep a large loss derivative while the others
are fit, so SGD's weights are concentrated; SAM's phantom, which lowers every margin by about
``rho * ||grad f_i||``, spreads them out (Springer et al., ICLR 2024, Sec. 4.1). The probe splits are the
toy's, unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from sharplab.data.core import TwoFeatureData, register_dataset, rng_for
from sharplab.data.toy import ToyOptions, load_toy
from sharplab.errors import ConfigError


@dataclass(frozen=True)
class HeteroToyOptions(ToyOptions):
    easy_scale_min: float = 0.01  # smallest easy-margin factor a_i (log-uniform on [easy_scale_min, 1])

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.easy_scale_min <= 1:
            raise ConfigError(f"option easy_scale_min={self.easy_scale_min!r} must be in (0, 1]")


@register_dataset("toy-hetero", HeteroToyOptions,
                  "synthetic toy with heterogeneous easy margins (importance weighting visible)")
def load_hetero_toy(opt: HeteroToyOptions, root: str | None, seed: int) -> TwoFeatureData:
    base = ToyOptions(**{f.name: getattr(opt, f.name) for f in dataclasses.fields(ToyOptions)})
    data = load_toy(base, root, seed)
    dims = list(data.meta["easy_dims"])
    splits = dict(data.splits)
    for name in ("train", "val", "test"):
        sp = splits[name]
        rng = rng_for(seed, "toy-hetero", name)
        a = torch.from_numpy(np.exp(rng.uniform(np.log(opt.easy_scale_min), 0.0, len(sp.y))))
        x = sp.x.clone()
        s = (2 * sp.easy - 1).double()
        for j in dims:  # the mean s * margin becomes s * margin * a_i; the noise stays
            x[:, j] = (x[:, j].double() + s * opt.margin_easy * (a - 1)).float()
        splits[name] = dataclasses.replace(sp, x=x)
    meta = {**data.meta, "options": dict(opt.__dict__), "easy_feature": "sign with heterogeneous margin"}
    return TwoFeatureData("toy-hetero", splits, 2, 2, 2, meta=meta)
