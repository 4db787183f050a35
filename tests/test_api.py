"""The Python API: configure, build, train with callbacks and with your own networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gankit
from gankit.errors import ConfigError


class TinyG(nn.Module):
    def __init__(self, latent: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, 784), nn.Tanh())

    def forward(self, z):
        return self.net(z).view(-1, 1, 28, 28)


class TinyD(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 1))

    def forward(self, x):
        return self.net(x)  # (B, 1): gankit accepts (B,) or (B, 1)


def test_configure_takes_leaf_names_and_dotted_paths():
    config = gankit.configure("wgan-gp", n_critic=3, model__opt_d__lr=3e-4, steps=10)
    assert (config.model.n_critic, config.model.opt_d.lr, config.train.steps) == (3, 3e-4, 10)
    with pytest.raises(ConfigError, match="did you mean"):
        gankit.configure("gan", n_critc=3)


def test_your_own_networks_train_with_gankit_losses_and_schedule(fashion, tmp_path):
    rows = []
    g, d = TinyG(64), TinyD()
    g_before = [p.detach().clone() for p in g.parameters()]
    d_before = [p.detach().clone() for p in d.parameters()]
    config = gankit.configure("wgan-gp", steps=4, batch_size=16, log_every=2, data_limit=500)
    from gankit.training import Trainer

    model = gankit.build(config, generator=g, discriminator=d)
    assert model.nets["generator"] is g and model.nets["discriminator"] is d
    trainer = Trainer(
        config,
        tmp_path,
        model=model,
        data=fashion,
        callbacks=[rows.append],
        progress=False,
        tensorboard=False,
    )
    trainer.fit()
    assert [r["step"] for r in rows] == [2, 4]
    assert {"loss/D", "loss/G", "gp", "critic_gap"} <= set(rows[-1])
    assert all(not torch.equal(a, b) for a, b in zip(g_before, g.parameters(), strict=True))
    # the critic's output bias gets no gradient from a Wasserstein loss; its weight moves
    assert not torch.equal(d_before[0], d.net[1].weight)


def test_train_returns_a_loaded_run_that_samples(fashion, tmp_path, data_dir):
    run = gankit.train(
        "gan-002",
        out=tmp_path / "r",
        steps=5,
        batch_size=32,
        data="fashion-mnist",
        data_dir=str(data_dir),
        progress=False,
    )
    assert run.step == 5
    images = run.sample(10, seed=3)
    assert images.shape == (10, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images, gankit.load_run(tmp_path / "r").sample(10, seed=3))
    grid = gankit.show_grid(images)
    assert grid.size[0] > 28
