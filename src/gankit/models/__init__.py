"""Models = networks + losses + phases.

The training loop knows nothing about families: it runs each model's :class:`Phase` list. A
GAN has two phases (D × n_critic, G × g_steps), BiGAN has D and E+G, an autoencoder one.
Differences between families live here, in the phase definitions.
"""

from torch import nn

from gankit.config import ModelConfig
from gankit.errors import ConfigError
from gankit.models.autoencoder import VAE, AutoEncoder, Reconstructing
from gankit.models.base import Context, GenerativeModel, Phase, Stats
from gankit.models.bigan import BiGAN
from gankit.models.gan import GAN

FAMILIES: dict[str, type[GenerativeModel]] = {
    "ae": AutoEncoder,
    "vae": VAE,
    "gan": GAN,
    "bigan": BiGAN,
}


def build_model(config: ModelConfig, **networks: nn.Module) -> GenerativeModel:
    """The model of ``config``; any network can be replaced by your own ``nn.Module``.

    ``build_model(cfg, generator=MyG(), discriminator=MyD())`` keeps the family's losses,
    schedule and optimisers. A generator maps (B, latent) [and labels] to (B, C, H, W) in the
    model's data range; a discriminator maps images [and labels] to logits (B,) or (B, 1).
    """
    cls = FAMILIES[config.family]
    try:
        return cls(config, **networks)
    except TypeError as err:
        raise ConfigError(
            f"family {config.family!r} does not take networks {sorted(networks)}: {err}"
        ) from None


__all__ = [
    "VAE",
    "GAN",
    "AutoEncoder",
    "BiGAN",
    "Context",
    "GenerativeModel",
    "Phase",
    "Reconstructing",
    "Stats",
    "build_model",
]
