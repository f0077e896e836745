"""What must not change between SAM's two passes: BatchNorm running statistics and the RNG stream.

*BatchNorm.* A SAM step runs the model twice. With ``bn_policy="once"`` (the default) only the pass at
the real parameters w updates ``running_mean``, ``running_var`` and ``num_batches_tracked``: the buffers
are saved before the ascent-point pass and restored after it (zeroing the momentum would not do, since
``num_batches_tracked`` still counts and ``momentum=None`` layers use it). The normalisation itself is
untouched: both passes use the batch statistics, as in training mode. ``bn_policy="every"`` lets both
passes update the statistics (the behaviour of the original SAM code).

*Randomness.* The pass at w + eps replays the RNG state of the pass at w, so dropout draws the same
masks and the perturbation is measured on the same function; afterwards the RNG is where a single pass
would have left it, so a SAM run and an SGD run consume the same random stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BN_POLICIES = ("once", "every")


def check_bn_policy(policy: str) -> str:
    if policy not in BN_POLICIES:
        from sharplab.errors import SharplabError

        raise SharplabError(f"bn_policy must be one of {BN_POLICIES}, got {policy!r}")
    return policy


def _tracking(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm) and module.training and module.track_running_stats


def _save(module: nn.Module, saved: dict[nn.Module, list[torch.Tensor | None]]) -> None:
    if module not in saved:
        saved[module] = [
            None if b is None else b.clone()
            for b in (module.running_mean, module.running_var, module.num_batches_tracked)
        ]


def _restore(saved: dict[nn.Module, list[torch.Tensor | None]]) -> None:
    with torch.no_grad():
        for module, bufs in saved.items():
            for name, value in zip(("running_mean", "running_var", "num_batches_tracked"), bufs):
                current = getattr(module, name)
                if value is not None and current is not None:
                    current.copy_(value)


class Nesting:
    """What the first hooked pass of an optimizer showed about its model: ``nested`` is ``True`` when every
    module ran inside the forward of the top-level module whose subtree holds it (the usual case), ``False``
    when one did not (a module kept outside the tree, such as a teacher held in a plain attribute), and
    ``None`` before any pass was seen."""

    def __init__(self) -> None:
        self.nested: bool | None = None


class BNGuard:
    """Undo every BatchNorm running-statistics update made between :meth:`start` and :meth:`stop`.

    With ``model`` given, its BatchNorm layers are saved at :meth:`start`. Without it (``SAM.step(closure)``
    or ``first_step()`` where the optimizer never sees the model), a global module forward pre-hook saves,
    the first time a module runs, every BatchNorm layer in that module's subtree. Saving the whole subtree
    is what makes ``torch.compile(model)`` safe: once compiled, only the outer ``OptimizedModule`` runs
    through ``Module.__call__`` (its BatchNorm layers are inside the compiled graph and fire no hooks).
    A compiled *function* that calls the model hides even that: pass ``model=`` then.

    A global hook sends every module call down PyTorch's slow path (about 10 us a call on a CPU). With a
    :class:`Nesting` shared across steps, the first pass also checks that every module runs inside the
    forward of the top-level module whose subtree holds it; if so, later passes lift the global hook for
    the duration of each top-level module's forward (its subtree is saved already) and put it back after,
    so only top-level calls pay for it.
    """

    def __init__(self, model: nn.Module | None = None, nesting: Nesting | None = None) -> None:
        self.model, self.nesting = model, nesting
        self.saved: dict[nn.Module, list[torch.Tensor | None]] = {}
        self._seen: set[int] = set()
        self._handle = None  # the global pre-hook
        self._local = None  # cheap mode: the post-hook of the top-level module whose forward runs
        self._learn = None  # first pass: the global post-hook tracking the nesting
        self._depth, self._top, self._nested = 0, set(), True

    @property
    def hooked(self) -> bool:
        """Whether this guard watches module calls (no ``model`` given)."""
        return self._handle is not None or self._local is not None

    def _save_subtree(self, module: nn.Module) -> None:
        for sub in module.modules():
            if id(sub) in self._seen:
                continue
            self._seen.add(id(sub))
            if _tracking(sub):
                _save(sub, self.saved)

    def _pre(self, module: nn.Module, args: object) -> None:
        if id(module) not in self._seen:
            self._save_subtree(module)
        if self._learn is not None:  # first pass: does every call stay inside its top-level module's tree?
            if self._depth == 0:
                self._top = {id(m) for m in module.modules()}
            elif id(module) not in self._top:
                self._nested = False
            self._depth += 1
        elif self.nesting is not None and self.nesting.nested:  # lift the hook for this module's forward
            self._handle.remove()
            self._handle = None
            self._local = module.register_forward_hook(self._post, always_call=True)

    def _post(self, module: nn.Module, args: object, output: object) -> None:
        if self._local is not None:
            self._local.remove()
            self._local = None
            self._handle = nn.modules.module.register_module_forward_pre_hook(self._pre)

    def _post_learn(self, module: nn.Module, args: object, output: object) -> None:
        self._depth -= 1

    def start(self) -> BNGuard:
        if self.model is not None:
            self._save_subtree(self.model)
            return self
        self._handle = nn.modules.module.register_module_forward_pre_hook(self._pre)
        if self.nesting is not None and self.nesting.nested is None:
            self._learn = nn.modules.module.register_module_forward_hook(self._post_learn, always_call=True)
        return self

    def stop(self) -> None:
        for handle in (self._handle, self._local, self._learn):
            if handle is not None:
                handle.remove()
        if self._learn is not None and self._seen:
            self.nesting.nested = self._nested
        self._handle = self._local = self._learn = None
        _restore(self.saved)
        self.saved, self._seen = {}, set()


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module | None = None, enabled: bool = True,
                    nesting: Nesting | None = None) -> Iterator[None]:
    """Undo every BatchNorm running-statistics update made inside the block (see :class:`BNGuard`)."""
    if not enabled:
        yield
        return
    guard = BNGuard(model, nesting).start()
    try:
        yield
    finally:
        guard.stop()


class RNGSnapshot:
    """The CPU RNG state and that of every CUDA device holding one of ``tensors``."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.cpu = torch.get_rng_state()
        devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
        self.cuda = {d: torch.cuda.get_rng_state(d) for d in devices}

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for d, state in self.cuda.items():
            torch.cuda.set_rng_state(state, d)
