import pytest
import torch
from torch import nn

from sharplab.errors import SharplabError
from sharplab.models import MLP, MODELS, PreActResNet18, SmallCNN, build_model


@pytest.mark.parametrize(
    ("in_channels", "size", "feature_dim"),
    [(3, (32, 32), 128 * 4 * 4), (1, (56, 28), 128 * 7 * 4), (3, (64, 32), 128 * 8 * 4)],
)
def test_small_cnn_feature_width_matches_conv_arithmetic(in_channels, size, feature_dim):
    model = SmallCNN(in_channels, num_classes=5, input_size=size)
    x = torch.randn(3, in_channels, *size)
    assert model.features(x).shape == (3, feature_dim)
    assert model(x).shape == (3, 5)
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (32, (5, 5), (2, 2), (2, 2)),
        (64, (3, 3), (2, 2), (1, 1)),
        (128, (3, 3), (2, 2), (1, 1)),
    ]


def test_forward_is_head_of_features():
    model = MLP(10, 3, hidden=(7, 5))
    x = torch.randn(4, 10)
    torch.testing.assert_close(model(x), model.head(model.features(x)))
    assert model.feature_dim == 5


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_preact_resnet18_shapes_and_size(norm):
    model = PreActResNet18(num_classes=10, norm=norm)
    n_params = sum(p.numel() for p in model.parameters())
    assert 11.1e6 < n_params < 11.2e6  # the standard CIFAR PreAct ResNet-18 has ~11.17M parameters
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == (norm == "bn")


def test_registry_builds_and_rejects_unknown_names():
    assert set(MODELS.names()) >= {"small-cnn", "mlp", "preact-resnet18"}
    assert isinstance(build_model("small_cnn", in_channels=1, num_classes=2, input_size=(28, 28)), SmallCNN)
    with pytest.raises(SharplabError, match="unknown model 'vit'"):
        build_model("vit")


def test_pooled_small_cnn_has_128_features_equal_to_the_spatial_mean():
    pooled = build_model("small-cnn-gap", in_channels=1, num_classes=5, input_size=(56, 28))
    flat = SmallCNN(1, 5, (56, 28))
    flat.body.load_state_dict(pooled.body.state_dict())
    x = torch.randn(2, 1, 56, 28)
    assert pooled.feature_dim == 128
    torch.testing.assert_close(pooled.features(x), flat.features(x).view(2, 128, 7, 4).mean(dim=(2, 3)))
