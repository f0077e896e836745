"""The digits lab against a hand-written training loop; resume; divergence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sharplab.errors import ConfigError, Diverged
from sharplab.labs.digits import N_TEST, N_TRAIN, DigitsConfig, load_digits_tensors, run
from sharplab.runner.context import RunContext
from sharplab.runner.validation import validate_config

SMALL = dict(width=8, depth=1, train_size=200, batch_size=32, epochs=2, dtype="float64")


def _weights(ctx: RunContext) -> dict[str, torch.Tensor]:
    return torch.load(ctx.run_dir / "model.pt", weights_only=True)


def test_data_split_is_fixed_and_complete():
    xtr, ytr, xte, yte = load_digits_tensors(torch.float64)
    assert (len(ytr), len(yte)) == (N_TRAIN, N_TEST) and xtr.shape[1] == 64
    assert float(xtr.min()) >= 0.0 and float(xtr.max()) == 1.0
    assert sorted(set(ytr.tolist())) == list(range(10))
    xtr2, *_ = load_digits_tensors(torch.float64)
    assert torch.equal(xtr, xtr2)


def test_sgd_run_equals_a_plain_loop(tmp_path):
    cfg = DigitsConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3, **SMALL)
    ctx = RunContext(tmp_path / "lab", seed=3)
    metrics = run(cfg, ctx)

    # reference: the same recipe written out by hand
    torch.manual_seed(3)
    from sharplab.models import MLP

    model = MLP(64, 10, hidden=(8,)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    xtr, ytr, xte, yte = load_digits_tensors(torch.float64)
    xtr, ytr = xtr[:200], ytr[:200]
    gen = torch.Generator().manual_seed(3)
    losses = []
    for _ in range(2):
        perm = torch.randperm(200, generator=gen)
        epoch_losses = []
        for b in range(200 // 32):  # the last partial batch is dropped
            idx = perm[b * 32 : (b + 1) * 32]
            opt.zero_grad()
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            epoch_losses.append(loss.item())
        losses.append(sum(epoch_losses) / len(epoch_losses))
    ref = model.state_dict()
    got = _weights(ctx)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    with torch.no_grad():
        err = (model(xte).argmax(1) != yte).double().mean().item()
    assert metrics["test_error"] == err and metrics["train_loss"] == pytest.approx(losses[-1], rel=1e-12)
    assert [s for s, _ in ctx.history] == [1, 2]


def test_sam_with_rho_zero_is_sgd(tmp_path):
    sgd = RunContext(tmp_path / "sgd", seed=0)
    sam = RunContext(tmp_path / "sam", seed=0)
    run(DigitsConfig(optimizer="sgd", **SMALL), sgd)
    run(DigitsConfig(optimizer="sam", rho=0.0, **SMALL), sam)
    a, b = _weights(sgd), _weights(sam)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-12) for k in a)
    moved = RunContext(tmp_path / "sam2", seed=0)
    run(DigitsConfig(optimizer="sam", rho=0.1, **SMALL), moved)
    c = _weights(moved)
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-4  # rho > 0 does change the path


class _Crash(Exception):
    pass


class _CrashingContext(RunContext):
    """Raises right after the n-th checkpoint is on disk, like a kill between two steps."""

    crash_after = 2

    def save_checkpoint(self, state):
        super().save_checkpoint(state)
        self.crash_after -= 1
        if self.crash_after == 0:
            raise _Crash


@pytest.mark.parametrize("crash_after", [1, 3])  # mid-epoch (checkpoint_every) and at an epoch boundary
def test_resume_from_checkpoint_is_bit_exact(tmp_path, crash_after):
    cfg = DigitsConfig(optimizer="sam", rho=0.05, checkpoint_every=4, **{**SMALL, "dtype": "float32"})
    ref = RunContext(tmp_path / "ref", seed=1)
    ref_metrics = run(cfg, ref)
    crashing = _CrashingContext(tmp_path / "crash", seed=1)
    crashing.crash_after = crash_after
    with pytest.raises(_Crash):
        run(cfg, crashing)
    torch.manual_seed(12345)  # a resumed process starts with other global RNG states
    resumed = RunContext(tmp_path / "crash", seed=1)
    assert run(cfg, resumed) == ref_metrics
    a, b = _weights(ref), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_raises_diverged(tmp_path):
    cfg = DigitsConfig(optimizer="sgd", lr=1e30, momentum=0.0, **{**SMALL, "dtype": "float32"})
    with pytest.raises(Diverged) as err:
        run(cfg, RunContext(tmp_path, seed=0))
    assert 0 < err.value.step < 12


def test_config_checks():
    with pytest.raises(ConfigError, match="batch_size = 64 exceeds the 50 training images"):
        validate_config(DigitsConfig, {"train_size": 50, "batch_size": 64})
    with pytest.raises(ConfigError, match="optimizer = 'adam'"):
        validate_config(DigitsConfig, {"optimizer": "adam"})


def test_validation_split_is_held_out_of_training_and_scored(tmp_path):
    """val_size = N: the last N training images are the validation split; training uses the first ones only,
    so the run equals one whose training set is those first images (val metrics on the held-out ones)."""
    a = run(DigitsConfig(optimizer="sgd", val_size=300, **SMALL), RunContext(tmp_path / "a", seed=1))
    b = run(DigitsConfig(optimizer="sgd", **SMALL), RunContext(tmp_path / "b", seed=1))
    assert a["test_error"] == b["test_error"]  # train_size=200 of the first 1,047 = the same 200 images
    from sharplab.models import MLP

    model = MLP(64, 10, hidden=(8,)).double()
    model.load_state_dict(torch.load(tmp_path / "a" / "model.pt", weights_only=True))
    xtr, ytr, *_ = load_digits_tensors(torch.float64)
    with torch.no_grad():
        err = (model(xtr[-300:]).argmax(1) != ytr[-300:]).double().mean().item()
    assert a["val_error"] == err
    with pytest.raises(ValueError, match="exceed"):
        DigitsConfig(train_size=1200, val_size=300)


def test_digits_report_has_the_metric_table_in_percent(tmp_path):
    from sharplab.cli import main

    study = tmp_path / "s.toml"
    study.write_text('lab = "digits"\nname = "t"\n[config]\nwidth = 8\ndepth = 1\ntrain_size = 128\n'
                     'batch_size = 32\nepochs = 1\n[grid]\nseed = [0, 1]\n')
    assert main(["run", str(study), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert main(["report", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "digits: final metrics over seeds (mean ± std, 95% CI)" in md and "test_error (%)" in md


def test_digits_report_plots_against_what_the_study_varies():
    from types import SimpleNamespace

    from sharplab.labs.digits import report
    from sharplab.runner.report import ReportBuilder as _Builder

    class ReportBuilder(_Builder):  # keeps each figure's axes before it is rendered and closed
        axes: dict = {}

        def add_figure(self, title, figure, dpi=110):
            ReportBuilder.axes[title] = (figure.axes[0].get_xscale(), figure.axes[0].get_xlabel())
            super().add_figure(title, figure, dpi)

    def run(seed, **config):
        cfg = {"optimizer": "sgd", "rho": 0.05, "lr": 0.1, **config}
        return SimpleNamespace(run_id=f"r{seed}{sorted(config.items())}", lab="digits", study="s", seed=seed,
                               nproc=1, status="done", config=cfg, history={1: {"test_error": 0.1}},
                               metrics={"test_error": 0.1 + 0.01 * seed, "train_loss": 0.2, "test_loss": 0.3})

    # the divergence example: lr varies over 0.1 .. 100, rho never does
    runs = [run(s, optimizer=o, lr=lr) for s in range(2) for o in ("sgd", "sam") for lr in (0.1, 1.0, 100.0)]
    builder = ReportBuilder("t")
    report(runs, builder)
    figs = {b.title: b for b in builder.blocks if b.kind == "figure"}
    title = next(t for t in figs if "test error vs" in t)
    assert "vs lr" in title
    assert ReportBuilder.axes[title] == ("log", "lr")
    assert any(b.kind == "table" for b in builder.blocks)
    # a rho grid is plotted against rho on a linear axis
    builder = ReportBuilder("t")
    report([run(s, rho=r) for s in range(2) for r in (0.0, 0.05, 0.1)], builder)
    title = next(b.title for b in builder.blocks if b.kind == "figure" and "test error vs" in b.title)
    assert "vs rho" in title and ReportBuilder.axes[title] == ("linear", "rho")
    # nothing numeric varies: no such figure
    builder = ReportBuilder("t")
    report([run(s) for s in range(2)], builder)
    assert not any("test error vs" in b.title for b in builder.blocks if b.kind == "figure")
