"""Feature extraction: batched equals one pass, eval mode during extraction, mode restored, no graph."""

from __future__ import annotations

import torch
from torch import nn

from sharplab.probe import error_rate, extract_features, predict


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(8, 3)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def test_batched_extraction_matches_eval_mode_single_pass():
    torch.manual_seed(0)
    net = _BNNet()
    net.train()
    net(torch.randn(64, 4) * 3 + 1)  # move the running statistics away from their init
    x = torch.randn(37, 4)
    bn = net.body[1]
    mean_before = bn.running_mean.clone()
    z = extract_features(net, x, batch_size=5)
    assert net.training  # restored
    assert torch.equal(bn.running_mean, mean_before)  # eval mode: statistics untouched
    assert not z.requires_grad and z.shape == (37, 8)
    lin = net.body[0]
    ref = torch.relu((lin(x) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
    torch.testing.assert_close(z, ref.detach())


def test_predict_and_error_rate():
    torch.manual_seed(1)
    net = _BNNet().eval()
    x = torch.randn(20, 4)
    pred = predict(net, x, batch_size=3)
    torch.testing.assert_close(pred, net(x).argmax(1))
    y = pred.clone()
    y[:5] = (y[:5] + 1) % 3
    assert error_rate(net, x, y, batch_size=7) == 5 / 20
    assert not net.training
