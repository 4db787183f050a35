"""The FLOP counter against hand counts (2 FLOPs per multiply-add, GEMMs and convolutions)."""

from __future__ import annotations

import torch
from torch import nn

import gankit
from gankit.tools.flops import count_flops, sample_flops, step_flops
from gankit.training import Trainer


def test_mlp_forward_and_backward_match_a_hand_count():
    b, sizes = 8, [784, 256, 64, 1]
    net = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    x = torch.randn(b, 784)
    gemms = [2 * b * i * o for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
    assert count_flops(lambda: net(x)) == sum(gemms)
    # backward: a weight gradient per layer, an input gradient for all but the first
    # (the data needs none)
    assert count_flops(lambda: net(x).sum().backward()) == 2 * sum(gemms) + sum(gemms[1:])


def test_conv_net_forward_matches_a_hand_count():
    b = 4
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),  # 28×28 out
        nn.Conv2d(8, 16, 4, stride=2, padding=1),  # 14×14 out
        nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1),
    )  # 28×28 out
    x = torch.randn(b, 1, 28, 28)
    conv1 = 2 * b * 28 * 28 * 8 * (1 * 3 * 3)
    conv2 = 2 * b * 14 * 14 * 16 * (8 * 4 * 4)
    deconv = 2 * b * 14 * 14 * 16 * (4 * 4 * 4)  # each input pixel scatters a 4×4×4 patch
    assert count_flops(lambda: net(x)) == conv1 + conv2 + deconv


def test_a_gan_step_counts_n_critic_d_updates_and_one_g_update(tiny_data, tmp_path):
    config = gankit.configure("gan", batch_size=16, steps=1, n_critic=2)
    trainer = Trainer(config, tmp_path, data=tiny_data, progress=False, tensorboard=False)
    g_forward = sample_flops(trainer.model, 16)
    d = trainer.model.nets["discriminator"]
    x = trainer.model.prepare(tiny_data.images[:16])
    d_forward = count_flops(lambda: d(x))
    # D update: G forward (no grad) + D forward on real and fake + D backward (weights and,
    # for the fake and real inputs, nothing: inputs need no gradient) = G + 2·D + 2·D;
    # G update: G forward + D forward + D backward (input gradient only) + G backward
    # (weights, and inputs of all but the first layer).
    total = step_flops(trainer)
    assert trainer.step == 1
    assert (
        2 * (g_forward + 4 * d_forward)
        < total
        < 2 * (g_forward + 4 * d_forward) + 4 * g_forward + 3 * d_forward
    )
