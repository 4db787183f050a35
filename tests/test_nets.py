"""The layer language, initialisations and wrappers: shapes, parameters, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gankit.errors import ConfigError
from gankit.nets import (
    BatchNormNoScale,
    Critic,
    Encoder,
    Generator,
    JointCritic,
    apply_spectral_norm,
    build_body,
    count_parameters,
    init_weights,
)


def test_layer_language_tracks_shapes():
    body, out = build_body(
        ["conv 32 k5 same", "lrelu 0.2", "maxpool 2", "conv 64 k4 s2 p1", "bn", "flatten", "fc 10"],
        (1, 28, 28),
    )
    assert out == (10,)
    assert body(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    conv2 = body[3]
    assert (conv2.in_channels, conv2.out_channels, conv2.stride) == (32, 64, (2, 2))
    assert body[4].num_features == 64  # bn width inferred from its input


def test_transposed_conv_output_padding_and_valid_padding():
    _, out = build_body(["reshape 128 6 6", "convT 64 k4 s2", "convT 1 k2 s2"], (4608,))
    assert out == (1, 28, 28)  # (6 - 1)·2 + 4 = 14, then 28
    _, out = build_body(["reshape 8 7 7", "convT 4 k3 s2 p1 o1"], (392,))
    assert out == (4, 14, 14)


@pytest.mark.parametrize(
    "layers, phrase",
    [
        (["fc 10"], "needs flat input"),
        (["flatten", "conv 3 k3"], "needs (C, H, W) input"),
        (["flatten", "reshape 3 3 3"], "cannot reshape"),
        (["flatten", "dense 10"], "unknown layer 'dense'"),
        (["conv 8"], "malformed"),
        (["conv 8 k9"], "does not fit"),
    ],
)
def test_bad_layers_are_named(layers, phrase):
    with pytest.raises(ConfigError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        build_body(layers, (1, 4, 4))


def test_batchnorm_noscale_has_only_a_shift():
    bn = build_body(["bn eps=0.001 momentum=0.001 noscale"], (16,))[0][0]
    assert isinstance(bn, BatchNormNoScale)
    assert count_parameters(bn) == 16
    assert bn.norm.eps == 1e-3 and bn.norm.momentum == 1e-3
    x = torch.randn(64, 16) * 3 + 5
    y = bn(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(16), atol=1e-5, rtol=0)


def test_trunc_normal_init_cuts_at_two_sigma_and_covers_biases():
    torch.manual_seed(0)
    layer = nn.Linear(400, 300)
    init_weights(layer, "trunc_normal:0.1")
    for p in (layer.weight, layer.bias):
        assert p.abs().max() <= 0.2 + 1e-6
    # N(0, 0.1²) truncated at ±2σ has standard deviation 0.1·0.8796
    assert abs(layer.weight.std().item() - 0.08796) < 0.002


def test_he_normal_init_matches_its_formula():
    torch.manual_seed(0)
    layer = nn.Linear(848, 128)
    init_weights(layer, "he_normal")
    assert abs(layer.weight.std().item() - 1 / math.sqrt(848 / 2)) < 0.002
    assert torch.count_nonzero(layer.bias) == 0


def test_unknown_init_is_refused():
    with pytest.raises(ConfigError, match="unknown init 'glorot'"):
        init_weights(nn.Linear(2, 2), "glorot")


def test_wrappers_check_their_output_shapes():
    with pytest.raises(ConfigError, match="generator layers produce"):
        Generator(["fc 784"], 8, (1, 28, 28))
    with pytest.raises(ConfigError, match="end with 'fc 1'"):
        Critic(["flatten", "fc 4"], (1, 28, 28))
    with pytest.raises(ConfigError, match="must end flat"):
        Encoder(["conv 4 k3"], (1, 28, 28), 6)
    assert Encoder(["flatten", "fc 12"], (1, 28, 28), 6)(torch.zeros(2, 1, 28, 28)).shape == (2, 6)


def test_conditional_generator_and_projection_critic_use_the_label():
    torch.manual_seed(0)
    g = Generator(["fc 784", "reshape 1 28 28"], 4, (1, 28, 28), num_classes=10)
    z = torch.randn(2, 4)
    a, b = g(z, torch.tensor([0, 0])), g(z, torch.tensor([0, 1]))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    d = Critic(["flatten", "fc 16"], (1, 28, 28), num_classes=10)
    x = torch.randn(2, 1, 28, 28)
    assert d(x, torch.tensor([3, 3])).shape == (2,)
    assert not torch.equal(d(x, torch.tensor([3, 3])), d(x, torch.tensor([3, 4])))


def test_joint_critic_sees_image_and_code():
    d = JointCritic(["fc 8", "relu", "fc 1"], ["flatten"], [], (1, 28, 28), 64)
    assert d.body[0].in_features == 784 + 64
    assert d(torch.zeros(5, 1, 28, 28), torch.zeros(5, 64)).shape == (5,)


def test_spectral_norm_bounds_the_largest_singular_value():
    torch.manual_seed(0)
    body, _ = build_body(["fc 64", "relu", "fc 1"], (32,))
    with torch.no_grad():
        body[0].weight.mul_(10)
    apply_spectral_norm(body)
    for _ in range(30):  # power iterations run in training mode
        body(torch.randn(4, 32))
    body.eval()
    sigma = torch.linalg.matrix_norm(body[0].weight, ord=2).item()
    assert sigma == pytest.approx(1.0, abs=0.05)


def test_batchstats_normalises_by_the_batch_in_eval_mode():
    body, _ = build_body(["bn batchstats", "bn"], (8,))
    body.eval()
    x = torch.randn(32, 8) * 4 + 3
    y = body[0](x)
    torch.testing.assert_close(y.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    # a tracking batch norm in eval mode uses its (initial) running statistics instead
    torch.testing.assert_close(body[1](x), x / (1 + 1e-5) ** 0.5)


def test_minibatch_std_sees_the_spread_within_each_group():
    body, out = build_body(["flatten", "mbstd 2"], (3,))
    assert out == (4,)  # one more feature
    # samples i and i + 2 form a group (i mod B/g): groups {0, 2} and {1, 3}
    x = torch.tensor([[0.0, 0, 0], [1, 1, 1], [2, 4, 6], [1, 1, 1]])
    y = body(x)
    torch.testing.assert_close(y[:, :3], x)  # the input passes through unchanged
    spread = (torch.tensor([1.0, 2, 3]) ** 2 + 1e-8).sqrt().mean()  # |2 − 0| / 2 per feature
    torch.testing.assert_close(
        y[:, 3], torch.stack([spread, torch.tensor(1e-4), spread, torch.tensor(1e-4)])
    )


def test_minibatch_std_on_feature_maps_and_odd_batches():
    body, out = build_body(["conv 4 k3 p1", "mbstd"], (1, 6, 6))
    assert out == (5, 6, 6)  # one more channel
    y = body(torch.randn(6, 1, 6, 6))  # 6 is not a multiple of 4: groups of 2
    assert y.shape == (6, 5, 6, 6)
    assert (y[:, 4] == y[:, 4, :1, :1]).all()  # one value per sample, over the whole map
    copies = body(torch.ones(3, 1, 6, 6))  # identical samples: no spread
    torch.testing.assert_close(copies[:, 4], torch.full((3, 6, 6), 1e-4))
    single = body(torch.randn(1, 1, 6, 6))  # one sample: a group of one
    torch.testing.assert_close(single[:, 4], torch.full((1, 6, 6), 1e-4))
