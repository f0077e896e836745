"""Configuration of one deep-network training run (the ``deep-net`` lab)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sharplab.data.image_classification import IMAGE_SETS
from sharplab.errors import ConfigError
from sharplab.labs.fields import lr_field, momentum_field, rho_field, weight_decay_field
from sharplab.labs.training import OptimizerSpec, check_optimizer
from sharplab.optim import registry

#: the study's methods first; then every other ``sharplab.optim`` family member (``sam`` is ``m-sam``, m = 0)
STUDY_METHODS = ("erm", "random", "nsam", "m-sam", "usam")
METHODS = (*STUDY_METHODS, *(n for n in registry.names() if n not in ("sam", *STUDY_METHODS)))
SCHEDULES = ("piecewise", "constant", "cosine")
#: m-SAM with at most this many micro-batches per batch uses sam_grad's loop strategy, else its ``auto``
#: (vmap for narrow networks)
LOOP_MAX_MICRO_BATCHES = 2
#: the study's rule methods, stepped with ``m`` set (the batch size for the whole batch): their gradient comes
#: from :func:`sharplab.optim.sam_grad`, which evaluates w + eps with ``functional_call`` and never moves w, the
#: path these methods have always taken in this lab. ``SAM``'s other path (w moved in place, then restored from
#: its saved copy) gives the same gradient up to float32 rounding, which training amplifies; keeping one path per
#: method keeps recorded runs reproducible.
FUNCTIONAL_METHODS = ("m-sam", "usam", "random")
MODELS = ("preact-resnet18", "preact-resnet34")
#: the most ascent steps per step (each is one more forward/backward)
MAX_ASCENT_STEPS = 100
#: the widest first stage accepted: 16x the paper's 64 channels (a ResNet-18 of width 1024 has ~2.8e9 weights)
MAX_WIDTH = 1024


def _f(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class DeepNetConfig:
    """One run: data, model, SGD-momentum training with a weight-perturbation ``method``.

    ``method``: ``erm`` (plain SGD), ``random`` (gradient at w + a random direction of norm rho),
    ``nsam`` (ascent direction from the *previous* batch, the official approximation of n-SAM),
    ``m-sam`` (m-SAM: own normalised ascent per micro-batch of ``m``; ``m = 0`` or the batch size is
    standard SAM), ``usam`` (unnormalised ascent eps = rho g, whole batch), or any other member of the
    ``sharplab.optim`` family (``gsam``, ``asam``, ``looksam``, ...; ``sharplab optim list``) with its own keywords
    in ``optimizer_options`` (e.g. ``{alpha = 0.3}`` for gsam). ``ascent_steps`` k > 1 makes the
    m-sam / usam ascent k projected steps of radius rho each onto the rho-ball (the official ``--sam_iters``
    with its default ``--sam_step_size_mult 1``).
    ``then_method`` / ``switch_epoch``: from epoch ``switch_epoch`` on, train with ``then_method``
    (fine-tuning ERM -> SAM and SAM -> ERM); the learning-rate schedule spans all ``epochs``.
    """

    dataset: str = _f("digits", "image set", choices=list(IMAGE_SETS))
    root: str = _f("", "data root ('' = $SHARPLAB_DATA and the offline folders)")
    n_train: int = _f(0, "keep a seeded subset of this many training examples (0 = all)", min=0, max=10**7)
    n_test: int = _f(0, "keep a seeded subset of this many test examples (0 = all)", min=0, max=10**7)
    model: str = _f("preact-resnet18", "network", choices=list(MODELS))
    width: int = _f(64, "channels of the first stage (official --model_width)", min=1, max=MAX_WIDTH)
    norm: str = _f("gn", "gn (GroupNorm) or bn (BatchNorm)", choices=["gn", "bn"])
    init: str = _f("official", "official (Kaiming-normal fan-out convs, zero linear bias, as the study) or "
                   "torch (PyTorch's defaults)", choices=["official", "torch"])
    epochs: int = _f(10, "passes over the training set", min=1, max=100_000)
    batch_size: int = _f(128, "batch size", min=1, max=100_000)
    lr: float = lr_field(0.1, "peak learning rate")
    lr_schedule: str = _f("piecewise", "piecewise (1, 0.1, 0.01 at 50 % / 75 %), constant, cosine",
                          choices=list(SCHEDULES))
    momentum: float = momentum_field(0.9)
    weight_decay: float = weight_decay_field(5e-4, "coupled L2 weight decay of SGD (official --l2_reg 5e-4)")
    method: str = _f("erm", "erm, random, nsam, m-sam, usam or any sharplab.optim member (sharplab optim list)",
                     choices=list(METHODS))
    optimizer_options: dict = field(default_factory=dict, metadata={
        "omit_default": True, "help": "the family members' own keywords, e.g. {alpha = 0.3} for gsam (each goes to "
                                      "the method or then_method that takes it)"})
    rho: float = rho_field(0.1, "perturbation radius")
    m: int = _f(0, "m-sam micro-batch size (0 = the whole batch); must divide batch_size", min=0)
    ascent_steps: int = _f(1, "projected ascent steps of m-sam / usam, each of radius rho (official --sam_iters, "
                           "--sam_step_size_mult 1)", min=1, max=MAX_ASCENT_STEPS)
    then_method: str = _f("", "method from switch_epoch on ('' = no switch)", choices=["", *METHODS])
    then_rho: float = _f(-1.0, "rho after the switch (-1 = rho)")
    switch_epoch: int = _f(0, "epoch at which then_method starts", min=0)
    augment: bool = _f(True, "padded random crop + flip (CIFAR: 4 px + flip; fmnist 3 px + flip; digits 1 px)")
    label_noise: float = _f(0.0, "fraction of training labels changed (symmetric noise)", min=0.0, max=1.0)
    grad_norm: bool = _f(False, "log the full-batch training loss and gradient norm each epoch")
    sharpness: bool = _f(False, "measure m-sharpness, top Hessian eigenvalue and trace at the end")
    sharpness_n: int = _f(256, "training examples used by the sharpness measures", min=1, max=10**6)
    sharpness_rho: float = _f(0.1, "radius of the m-sharpness measure", min=0.0)
    sharpness_m: int = _f(128, "micro-batch of the m-sharpness measure (divides sharpness_n)", min=1, max=10**6)
    eval_n: int = _f(0, "evaluate on the first n examples of each part (test, validation, training; 0 = all), "
                     "the last epoch's too", min=0, max=10**7)
    eval_every: int = _f(1, "evaluate on the test and validation parts every k epochs and at the last (official: "
                         "every 5)", min=1, max=100_000)
    train_eval_every: int = _f(1, "evaluate on the training set every k epochs and at the last", min=1,
                               max=100_000)
    device: str = _f("cpu", "cpu, cuda, or auto", choices=["cpu", "cuda", "auto"])

    def __post_init__(self) -> None:
        if self.m and self.batch_size % self.m:
            raise ValueError(f"m = {self.m} must divide batch_size = {self.batch_size}")
        if self.sharpness_n % self.sharpness_m:
            raise ValueError(f"sharpness_m = {self.sharpness_m} must divide sharpness_n = {self.sharpness_n}")
        if self.ascent_steps > 1 and not {self.method, self.then_method} & {"m-sam", "usam"}:
            raise ValueError(f"ascent_steps = {self.ascent_steps} needs method or then_method m-sam or usam "
                             "(erm and random take no ascent step, nsam one on the previous batch)")
        self._check_options()
        if self.then_method and not 0 < self.switch_epoch < self.epochs:
            raise ValueError(f"switch_epoch = {self.switch_epoch} must lie strictly between 0 and "
                             f"epochs = {self.epochs} when then_method is set")

    def _check_options(self) -> None:
        methods = [m for m in (self.method, self.then_method) if m]
        taken = {k for m in methods for k in method_keywords(m)}
        for key in self.optimizer_options:
            if key not in taken:
                raise ConfigError(f"optimizer_options: {key!r} is not a keyword of {' or '.join(methods)} (they take "
                                  f"{', '.join(sorted(taken)) or 'none'}; rho, m and ascent_steps are fields)")
        for m in methods:
            check_optimizer(method_spec(self, m, self.rho, seed=0))

    def method_at(self, epoch: int) -> tuple[str, float]:
        """(method, rho) used in ``epoch`` (0-based)."""
        if self.then_method and epoch >= self.switch_epoch:
            return self.then_method, (self.rho if self.then_rho < 0 else self.then_rho)
        return self.method, self.rho

    def lr_at(self, t: float) -> float:
        """Learning rate at fractional epoch t (official ``get_lr_schedule``; cosine to 0)."""
        import math

        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * t / self.epochs))
        frac = t / self.epochs
        return self.lr if frac < 0.5 else self.lr / 10 if frac < 0.75 else self.lr / 100


def method_keywords(method: str) -> tuple[str, ...]:
    """The own keywords (besides rho) of a method's family member; none for erm."""
    if method == "erm":
        return ()
    return tuple(k for k in registry.get("sam" if method == "m-sam" else method).defaults if k != "rho")


def method_spec(cfg: DeepNetConfig, method: str, rho: float, seed: int) -> OptimizerSpec:
    """The step builder's spec of one phase's method: ``erm`` the SGD base step; ``m-sam`` SAM with
    micro-batches of ``m`` (k <= :data:`LOOP_MAX_MICRO_BATCHES` of them by the loop: few micro-batches run
    faster as plain SAM steps than as vmap'd per-micro-batch gradients on CPU; width-8 ResNet-18, batch 64:
    m = 32 loop 56 vs vmap 96 ms, m = 8 loop 179 vs vmap 91 ms); ``random`` seeded from the run seed; any
    other family member by name, with the ``optimizer_options`` it takes; ``ascent_steps`` k > 1 projected
    steps of size rho each (official ``--sam_iters``, ``--sam_step_size_mult 1``)."""
    base = {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "rho": rho}
    if method == "erm":
        return OptimizerSpec("sgd", **base)
    options = {k: v for k, v in cfg.optimizer_options.items() if k in method_keywords(method)}
    if method == "random":
        options.setdefault("seed", seed + 7919)
    k = cfg.batch_size // cfg.m if cfg.m and cfg.m < cfg.batch_size else 1  # micro-batches per batch
    if method in FUNCTIONAL_METHODS:  # m = the batch: sam_grad's whole-batch path (see FUNCTIONAL_METHODS)
        m = cfg.m if method == "m-sam" and k > 1 else cfg.batch_size
        return OptimizerSpec("sam" if method == "m-sam" else method, **base, m=m, options=options,
                             ascent_steps=cfg.ascent_steps, ascent_step_size=1.0,
                             strategy="loop" if 1 < k <= LOOP_MAX_MICRO_BATCHES else "auto")
    return OptimizerSpec(method, **base, options=options, ascent_steps=cfg.ascent_steps, ascent_step_size=1.0)
