"""Every registered rule, as a plain optimizer, converges on a strongly convex quadratic; state round-trips."""

import pytest
import torch

from sharplab.optim import RULES, SAM, MultiStep, make_rule


@pytest.mark.parametrize("rule", RULES.names() + ["sam-x3"])
def test_every_rule_converges_on_a_quadratic(rule):
    """L(w) = 1/2 (w - c)^T A (w - c); SAM's fixed point lies within O(rho) of c."""
    a = torch.diag(torch.tensor([1.0, 4.0, 9.0]))
    c = torch.tensor([1.0, -1.0, 0.5])
    w = torch.nn.Parameter(torch.zeros(3))
    rule_obj = MultiStep("sam", steps=3) if rule == "sam-x3" else make_rule(rule)
    momentum = 0.9 if rule == "momentum-sam" else 0.0  # Momentum-SAM needs a momentum buffer (refused without)
    opt = SAM([w], torch.optim.SGD, rho=0.01, rule=rule_obj, lr=0.05, momentum=momentum)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (w - c) @ a @ (w - c)
        loss.backward()
        return loss

    for _ in range(400):
        opt.step(closure)
    assert torch.linalg.vector_norm(w.detach() - c) < 0.05


def test_random_rule_state_round_trips():
    a, b = make_rule("random"), make_rule("random")
    b.load_state_dict(a.state_dict())
    g = [torch.zeros(5)]
    torch.testing.assert_close(a.perturbation(g, g, [1.0]), b.perturbation(g, g, [1.0]))
