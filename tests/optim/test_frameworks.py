"""The framework recipes of examples/frameworks/ run and take the SAM step a hand-written loop takes.

The reference is davda54/sam's step written out (no sharplab): gradient at w, eps = rho g / (||g|| +
1e-12), gradient at w + eps, restore w, optional clipping, SGD with momentum; in the same precision
(autocast dtype) and on the same batches. float32 and bfloat16 results match to float32 rounding (the
frameworks run the same kernels; a power-of-two loss scale is exact); each test also checks that plain
SGD would not pass, so the comparison can fail. fp16: Lightning and Accelerate fall back or refuse on
CPU, so their CUDA code paths are driven with a CPU GradScaler (Lightning's own MixedPrecision plugin,
Accelerate's own AcceleratedOptimizer), which is exactly what they run on a GPU.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "frameworks"
sys.path.insert(0, str(EXAMPLES))

RHO, LR, MOMENTUM = 0.05, 0.1, 0.9


@pytest.fixture(autouse=True)
def _float32_and_quiet():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_default_dtype(previous)


def reference(make_model, batches, dtype=None, clip=None, rho=RHO):
    net = make_model()
    base = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

    def grads_at(x, y):
        base.zero_grad()
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(net(x), y)
        loss.backward()

    for x, y in batches:
        grads_at(x, y)
        params = list(net.parameters())
        norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in params]), p=2)
        old = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_(p.grad * (rho / (norm + 1e-12)).to(p))
        grads_at(x, y)
        with torch.no_grad():
            for p, o in zip(params, old):
                p.copy_(o)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        base.step()
    return net


def assert_sam_not_sgd(got, make_model, batches, dtype=None, clip=None, tol=1e-5):
    ref, sgd = reference(make_model, batches, dtype, clip), reference(make_model, batches, dtype, clip, rho=0.0)
    for p, q in zip(got.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)
    gap = max((p - q).abs().max().item() for p, q in zip(got.parameters(), sgd.parameters()))
    assert gap > 100 * tol, gap  # plain SGD would fail this comparison


def loader_batches(dataset, batch_size=16, epochs=2):
    x, y = dataset.tensors
    return [(x[i : i + batch_size], y[i : i + batch_size]) for _ in range(epochs) for i in range(0, len(y), batch_size)]


# --- Lightning ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed-plugin"])
def test_lightning(precision, manual):
    pytest.importorskip("lightning", reason="PyTorch Lightning is a test extra: pip install 'sharplab[test]'")
    import lightning_sam as ex

    if precision == "16-mixed-plugin":
        from lightning.pytorch.plugins.precision import MixedPrecision

        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        net = ex.train(manual=manual, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
        dtype = torch.float16
        assert scaler.get_scale() == 2.0**8  # no overflow, no skipped step
    else:
        net = ex.train(precision, manual)
        dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    assert_sam_not_sgd(net, ex.make_model, loader_batches(ex.make_data()), dtype)


# --- Accelerate --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mixed_precision", "two_pass"),
                         [("no", False), ("no", True), ("bf16", False), ("fp16", False), ("fp16", True)])
def test_accelerate(mixed_precision, two_pass):
    pytest.importorskip("accelerate", reason="Accelerate is a test extra: pip install 'sharplab[test]'")
    import accelerate_sam as ex
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # Accelerate keeps one process-wide state
    accelerator, scaler = None, None
    if mixed_precision == "fp16":  # on CPU Accelerate makes no scaler: give it the one it makes on CUDA
        accelerator = Accelerator(mixed_precision="fp16", cpu=True)
        accelerator.scaler = scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    net = ex.train(mixed_precision, two_pass, accelerator=accelerator)
    AcceleratorState._reset_state(True)
    if scaler is not None:
        assert scaler.get_scale() == 2.0**8  # every step taken, none skipped
    dtype = torch.bfloat16 if mixed_precision == "bf16" else None  # CPU fp16: float32 math, scaled loss
    assert_sam_not_sgd(net, ex.make_model, loader_batches(ex.make_data()), dtype)


# --- Hugging Face Trainer ----------------------------------------------------------------------------
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_hf_trainer(bf16):
    pytest.importorskip("transformers", reason="transformers is a test extra: pip install 'sharplab[test]'")
    import hf_trainer_sam as ex
    from accelerate.state import AcceleratorState

    class InOrder(ex.SAMTrainer):  # the reference sees the batches in order
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    AcceleratorState._reset_state(True)
    model = ex.train(bf16=bf16, max_grad_norm=0.5, trainer_cls=InOrder)
    AcceleratorState._reset_state(True)
    data = ex.ExamplesDataset()
    batches = [(data.x[i : i + 16], data.y[i : i + 16]) for _ in range(2) for i in (0, 16)]
    assert_sam_not_sgd(model, lambda: ex.TinyClassifier().net, batches, torch.bfloat16 if bf16 else None, clip=0.5)
