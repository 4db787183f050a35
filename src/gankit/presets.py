"""Every named configuration in one table: faithful reference presets and gankit's defaults.

A preset is plain data (nested dicts shaped like :class:`gankit.config.RunConfig`). The
reference presets (``gan-000`` …) restate the tutorial designs layer by layer; where a
tutorial leaves a number open, the preset's ``description`` says what was chosen; they take
the 28×28 grayscale images they were written for. gankit's own defaults (``gan``, ``dcgan`` …)
are modern, well-behaved configurations built for the images' shape (C, S, S): tuned at
1×28×28, and grown to colour and to 32×32, 64×64 … by the rule beside :func:`conv_plan`.
"""

from __future__ import annotations

import copy
import difflib

from gankit.errors import ConfigError

IMG = "reshape 1 28 28"
TF_ADAM = {"name": "adam", "betas": [0.9, 0.999], "eps": 1e-8}  # TF1 AdamOptimizer defaults
# tf-slim's batch_norm: decay 0.999, no γ, and is_training=True by default, so the tutorial
# normalises by the batch when it samples, too
SLIM_BN = "bn eps=0.001 momentum=0.001 noscale batchstats"


def _run(preset: str, description: str, model: dict, train: dict) -> dict:
    return {"preset": preset, "description": description, "model": model, "train": train}


# =========================================================================== reference presets


def _ae_000(variational: bool) -> dict:
    code = 3
    enc = ["flatten", "fc 128", "tanh", "fc 64", "tanh", "fc 12", "tanh"]  # then fc to the code
    dec = ["fc 12", "tanh", "fc 64", "tanh", "fc 128", "tanh", "fc 784", "sigmoid", IMG]
    name = "vae-000" if variational else "ae-000"
    what = (
        "VAE with ae-000's widths: a 3-D Gaussian code (μ, log σ²), reparameterised; loss "
        "= squared error summed over pixels + KL to N(0, I)"
        if variational
        else "MLP autoencoder 784→128→64→12→3→12→64→128→784, MSE, Adam 1e-3"
    )
    return _run(
        name,
        f"{what}. The notes give no activations: tanh hidden layers, linear code, sigmoid "
        "output on [0, 1] pixels; batch 128 and 20 epochs are gankit's choice.",
        {
            "family": "vae" if variational else "ae",
            "data_range": "unit",
            "latent": {"dim": code, "dist": "normal"},
            "encoder": {"layers": enc, "init": "xavier_uniform"},
            "generator": {"layers": dec, "init": "xavier_uniform"},
            "loss": {"recon": "mse-sum" if variational else "mse"},
            "opt_g": TF_ADAM | {"lr": 1e-3},
        },
        {"data": "mnist", "batch_size": 128, "epochs": 20, "sample_every": 1000},
    )


def _gan_000(conv: bool) -> dict:
    if conv:
        g = [
            "fc 1024",
            "relu",
            SLIM_BN,
            "fc 6272",
            "relu",
            SLIM_BN,
            "reshape 128 7 7",
            "convT 64 k4 s2 p1",
            "relu",
            SLIM_BN,
            "convT 1 k4 s2 p1",
            "tanh",
        ]
        d = [
            "conv 32 k5 same",
            "lrelu 0.2",
            "maxpool 2",
            "conv 64 k5 same",
            "lrelu 0.2",
            "maxpool 2",
            "flatten",
            "fc 1024",
            "lrelu 0.01",
            "fc 1",
        ]
    else:
        g = ["fc 1024", "relu", "fc 1024", "relu", "fc 784", "tanh", IMG]
        d = ["flatten", "fc 256", "lrelu 0.2", "fc 256", "lrelu 0.2", "fc 1"]
    return _run(
        "dcgan-000" if conv else "gan-000",
        (
            "DCGAN of the notes: D conv5×5 32/64 with max-pool, fc 1024; G fc 1024 → fc 7·7·128 "
            "→ two 4×4 stride-2 transposed convs, batch norm after ReLU (tf-slim: no γ, batch "
            "statistics also when sampling)"
            if conv
            else "MLP GAN of the notes: G 1024-1024-784 ReLU/tanh, D 256-256 LeakyReLU 0.2"
        )
        + "; U(−1, 1) noise of 96; data in [−1, 1]; sigmoid cross-entropy; "
        "Adam 3e-4 β1 0.5; one D then one G step on the same noise; batch 128, 10 epochs; "
        "tf-slim's Glorot-uniform init.",
        {
            "family": "gan",
            "data_range": "tanh",
            "latent": {"dim": 96, "dist": "uniform", "std": 1.0},
            "generator": {"layers": g, "init": "xavier_uniform"},
            "discriminator": {"layers": d, "init": "xavier_uniform"},
            "loss": {"gan": "nonsaturating"},
            "opt_g": {"name": "adam", "lr": 3e-4, "betas": [0.5, 0.999]},
            "opt_d": {"name": "adam", "lr": 3e-4, "betas": [0.5, 0.999]},
            "reuse_noise": True,
        },
        {
            "data": "mnist",
            "batch_size": 128,
            "epochs": 10,
            "log_every": 100,
            "sample_every": 1000,
            "grid_size": 16,
        },
    )


GAN_001_G = ["fc 256", "lrelu 0.2", "fc 784", "sigmoid", IMG]
GAN_001_D = ["flatten", "fc 256", "lrelu 0.2", "fc 1"]


def _gan_001() -> dict:
    return _run(
        "gan-001",
        "MLP GAN on Fashion-MNIST: G 256 LeakyReLU 0.2 → 784 sigmoid, D 256 → 1; N(0, 1) noise "
        "of 128; pixels x/255; every weight and bias from N(0, 0.1²) cut at 2σ; Adam 2e-4; "
        "batch 500 drawn at random each step; one D then one G step on the same noise; "
        "100,000 steps; 8 samples every 20 steps.",
        {
            "family": "gan",
            "data_range": "unit",
            "latent": {"dim": 128, "dist": "normal"},
            "generator": {"layers": GAN_001_G, "init": "trunc_normal:0.1"},
            "discriminator": {"layers": GAN_001_D, "init": "trunc_normal:0.1"},
            "loss": {"gan": "nonsaturating"},
            "opt_g": TF_ADAM | {"lr": 2e-4},
            "opt_d": TF_ADAM | {"lr": 2e-4},
            "reuse_noise": True,
        },
        {
            "data": "fashion-mnist",
            "batch_size": 500,
            "steps": 100_000,
            "sampler": "random",
            "log_every": 5,
            "sample_every": 20,
            "grid_size": 8,
            "checkpoint_every": 5000,
        },
    )


def _dcgan_001() -> dict:
    bn = "bn eps=0.0001 momentum=0.9"  # TF code: moving average with decay 0.1
    g = [
        "fc 4608",
        "tanh",
        "reshape 128 6 6",
        "convT 64 k4 s2",
        "lrelu 0.2",
        bn,
        "convT 1 k2 s2",
        "tanh",
        bn,
    ]
    d = [
        "conv 64 k5 same",
        "lrelu 0.2",
        "maxpool 2",
        "conv 128 k5 same",
        "lrelu 0.2",
        "maxpool 2",
        "flatten",
        "fc 512",
        "lrelu 0.2",
        "fc 1",
    ]
    return _run(
        "dcgan-001",
        "DCGAN of the Fashion-MNIST tutorial: G fc 6·6·128 tanh → 4×4 stride-2 'valid' "
        "transposed conv to 14×14×64 → LeakyReLU → BN → 2×2 stride-2 transposed conv → tanh → "
        "BN; D conv5×5 64/128 with max-pool, fc 512; N(0, 0.2²) noise of 4608; init N(0, "
        "0.05²) cut at 2σ; BN ε 1e-4, running-average decay 0.1; Adam 2e-5 (D) / 9e-5 (G); "
        "batch 50; each step = 5 D then 50 G updates. The tutorial trains on the first 200 "
        "images (--set data_limit=200) and never stops: 200 steps here (~12 s each on 2 cores).",
        {
            "family": "gan",
            "data_range": "tanh",
            "latent": {"dim": 4608, "dist": "normal", "std": 0.2},
            "generator": {"layers": g, "init": "trunc_normal:0.05"},
            "discriminator": {"layers": d, "init": "trunc_normal:0.05"},
            "loss": {"gan": "nonsaturating"},
            "opt_g": TF_ADAM | {"lr": 9e-5},
            "opt_d": TF_ADAM | {"lr": 2e-5},
            "n_critic": 5,
            "g_steps": 50,
        },
        {
            "data": "fashion-mnist",
            "batch_size": 50,
            "steps": 200,
            "log_every": 2,
            "sample_every": 2,
            "grid_size": 4,
            "checkpoint_every": 100,
        },
    )


def _wgan_001() -> dict:
    return _run(
        "wgan-001",
        "WGAN with weight clipping on gan-001's networks: no sigmoid, critic loss "
        "E[C(G(z))] − E[C(x)], clip to [−0.01, 0.01] after each critic update, RMSprop 5e-5, "
        "5 critic updates per G update, batch 64 (the numbers of Arjovsky et al. 2017).",
        {
            "family": "gan",
            "data_range": "unit",
            "latent": {"dim": 128, "dist": "normal"},
            "generator": {"layers": GAN_001_G, "init": "trunc_normal:0.1"},
            "discriminator": {"layers": GAN_001_D, "init": "trunc_normal:0.1"},
            "loss": {"gan": "wasserstein", "clip": 0.01},
            "opt_g": {"name": "rmsprop", "lr": 5e-5},
            "opt_d": {"name": "rmsprop", "lr": 5e-5},
            "n_critic": 5,
        },
        {
            "data": "fashion-mnist",
            "batch_size": 64,
            "steps": 100_000,
            "log_every": 50,
            "sample_every": 1000,
            "checkpoint_every": 5000,
        },
    )


def _gan_002() -> dict:
    return _run(
        "gan-002",
        "MLP GAN with one-sided label smoothing: G 128 LeakyReLU 0.01 → 784 tanh, D 128 → 1; "
        "U(−1, 1) noise of 100; pixels 2x − 1; D's real target 0.9; Adam 1e-3 (the text also "
        "mentions 2e-3: --lr 2e-3); batch 100, 100 epochs; one D then one G step on the same "
        "noise; 16 samples and a checkpoint after each epoch of 600 steps.",
        {
            "family": "gan",
            "data_range": "tanh",
            "latent": {"dim": 100, "dist": "uniform", "std": 1.0},
            "generator": {
                "layers": ["fc 128", "lrelu 0.01", "fc 784", "tanh", IMG],
                "init": "xavier_uniform",
            },
            "discriminator": {
                "layers": ["flatten", "fc 128", "lrelu 0.01", "fc 1"],
                "init": "xavier_uniform",
            },
            "loss": {"gan": "nonsaturating", "label_smoothing": 0.1},
            "opt_g": TF_ADAM | {"lr": 1e-3},
            "opt_d": TF_ADAM | {"lr": 1e-3},
            "reuse_noise": True,
        },
        {
            "data": "mnist",
            "batch_size": 100,
            "epochs": 100,
            "log_every": 100,
            "sample_every": 600,
            "checkpoint_every": 600,
            "grid_size": 16,
        },
    )


def _bigan_004() -> dict:
    return _run(
        "bigan-004",
        "BiGAN/ALI: E 784→128 ReLU→64, G 64→128 ReLU→784 sigmoid, D on the pair (x, z) "
        "848→128 ReLU→1; U(−1, 1) codes of 64; pixels in [0, 1]; weights N(0, 2/fan_in), "
        "biases 0; Adam 1e-3 for D and for E+G together; batch 32, 10,001 steps; both "
        "updates on the same batch and noise; a 4×4 grid every 1,000 steps.",
        {
            "family": "bigan",
            "data_range": "unit",
            "latent": {"dim": 64, "dist": "uniform", "std": 1.0},
            "encoder": {"layers": ["flatten", "fc 128", "relu"], "init": "he_normal"},
            "generator": {
                "layers": ["fc 128", "relu", "fc 784", "sigmoid", IMG],
                "init": "he_normal",
            },
            "discriminator": {
                "layers": ["fc 128", "relu", "fc 1"],
                "x_layers": ["flatten"],
                "init": "he_normal",
            },
            "loss": {"gan": "nonsaturating"},
            "opt_g": TF_ADAM | {"lr": 1e-3},
            "opt_d": TF_ADAM | {"lr": 1e-3},
            "reuse_noise": True,
        },
        {
            "data": "mnist",
            "batch_size": 32,
            "steps": 10_001,
            "log_every": 100,
            "sample_every": 1000,
            "grid_size": 16,
        },
    )


# =========================================================================== gankit defaults
# The defaults are built for the shape of the images they train on, (C, S, S). Their conv
# stacks start from b×b and double n ≥ 2 times, 4 ≤ b ≤ 7, so they reach S = b·2^n: 16, 20,
# 24, 28 (7·2²), 32 (4·2³), 40, 48, 56, 64 (4·2⁴), 80 … At 1×28×28 they are the designs that
# were tuned (tests/fixtures/default_presets_1x28.json pins them).
# Widths, small because these train on laptop CPUs: G's last transposed conv has 32 channels
# and each one before it twice as many, so its b×b start has 32·2^n (28: 128 → 64 → 32; 32:
# 256 → 128 → 64 → 32; 64: 512 → 256 → 128 → 64 → 32); D's stride-2 convs 64, 128, 256,
# 512; E's 32, 64, 128, 256; no width above 512 (128×128 and up repeat 512).
# No bias before batch norm: the norm removes it (its gradient is zero up to rounding).

MAX_WIDTH = 512
MAX_FOLDER_SIZE = 64  # folders of bigger images train at 64×64 unless image_size is set
DEFAULT_TRAIN = {
    "data": "fashion-mnist",
    "batch_size": 64,
    "log_every": 50,
    "sample_every": 500,
    "checkpoint_every": 1000,
}
ADAM_GAN = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}
# Adam without momentum (β1 = 0) and a shorter second-moment memory, as in StyleGAN2 (Karras
# et al. 2020): at equal CPU time it beat β1 0.5 in the DCGAN, the MLP GAN and the BiGAN
# (and in the WGAN-GP, with that family's β2 = 0.9)
ADAM_B0 = {"name": "adam", "betas": [0.0, 0.99]}
_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def conv_plan(size: int) -> tuple[int, int] | None:
    """(b, n) with ``size`` = b·2^n, 4 ≤ b ≤ 7 and n ≥ 2; None when no conv design reaches it."""
    for n in range(2, size.bit_length()):
        b, rest = divmod(size, 2**n)
        if rest == 0 and 4 <= b <= 7:
            return b, n
    return None


def reachable_sizes(limit: int) -> list[int]:
    """Every image size up to ``limit`` that the default models are built for, ascending."""
    return sorted(
        b * 2**n
        for n in range(2, max(limit.bit_length(), 2))
        for b in range(4, 8)
        if b * 2**n <= limit
    )


def nearest_sizes(size: int) -> list[int]:
    """The reachable sizes next to ``size``: the largest below it (if any), the smallest above."""
    below = [s for s in reachable_sizes(size) if s < size]
    above = [s for s in reachable_sizes(2 * size + 16) if s > size]
    return below[-1:] + above[:1]


def folder_image_size(stored: int) -> int:
    """The size a folder of ``stored``×``stored`` images trains at by default: its own when
    the designs reach it and it is at most 64, else the largest reachable size ≤ min(stored,
    64); ``stored`` itself when none is that small (refused when the model is built)."""
    fitting = reachable_sizes(min(stored, MAX_FOLDER_SIZE))
    return fitting[-1] if fitting else stored


def _widths(first: int, count: int) -> list[int]:
    """``count`` widths doubling from ``first``, none above MAX_WIDTH."""
    return [min(first * 2**i, MAX_WIDTH) for i in range(count)]


def _conv_g(channels: int, size: int, plan: tuple[int, int], tanh: bool = True) -> list[str]:
    """G: fc to (32·2^n, b, b), n 4×4 stride-2 transposed convs halving the width down to 32,
    a 3×3 conv to the image's channels: z (B, latent) → (B, C, S, S)."""
    b, n = plan
    start = min(32 * 2**n, MAX_WIDTH)
    layers = [f"fc {start * b * b} nobias", "bn", "relu", f"reshape {start} {b} {b}"]
    for width in reversed(_widths(32, n)):  # each doubles H and W: b·2 … b·2^n = S
        layers += [f"convT {width} k4 s2 p1 nobias", "bn", "relu"]
    return (
        layers
        + [f"conv {channels} k3 p1"]
        + ["tanh"] * tanh
        + [f"reshape {channels} {size} {size}"]
    )


def _conv_down(first: int, n: int, bn: bool) -> list[str]:
    """D/E trunk: n 4×4 stride-2 convs from ``first`` channels, doubling (S → S / 2^n = b),
    batch norm on all but the first when ``bn``; then flatten."""
    layers = []
    for i, width in enumerate(_widths(first, n)):
        norm = bn and i > 0
        layers += [f"conv {width} k4 s2 p1" + " nobias" * norm] + ["bn"] * norm + ["lrelu 0.2"]
    return layers + ["flatten"]


# the conv discriminators' head: a hidden layer over the whole image before the verdict
D_HEAD = ["fc 128", "lrelu 0.2", "fc 1"]


def _default_gan(name: str, description: str, model: dict, train: dict) -> dict:
    base = {
        "family": "gan",
        "data_range": "tanh",
        "latent": {"dim": 64, "dist": "normal"},
        "opt_g": ADAM_GAN,
        "opt_d": ADAM_GAN,
        "ema": 0.999,
    }
    return _run(name, description, base | model, DEFAULT_TRAIN | train)


def _defaults(channels: int, size: int, plan: tuple[int, int]) -> list[dict]:
    """gankit's eight defaults built for (channels, size, size) images; ``plan`` = (b, n)."""
    b, n = plan
    pixels = channels * size * size  # the MLP nets' image width (784 at 1×28×28)
    img = f"reshape {channels} {size} {size}"
    tanh_out = _conv_g(channels, size, plan)
    unit_out = _conv_g(channels, size, plan, tanh=False)  # logits: the AEs' BCE applies sigmoid
    conv_d, conv_d_bn = _conv_down(64, n, bn=False), _conv_down(64, n, bn=True)
    conv_e = _conv_down(32, n, bn=True)
    twice = _WORDS.get(n, str(n))
    g_up = ", ".join(map(str, reversed(_widths(32, n))))
    d_down = ", ".join(map(str, _widths(64, n)))
    bn_where = "the second" if n == 2 else "all but the first"
    sized = (
        ""
        if (channels, size) == (1, 28)
        else f" Built here for {channels}×{size}×{size} images; the numbers above were measured "
        "at 1×28×28 (Fashion-MNIST)."
    )
    presets = [
        _run(
            "ae",
            f"Convolutional autoencoder with a 64-D code: {twice} stride-2 conv layers down, "
            f"{twice} transposed up; Bernoulli (BCE) reconstruction loss; Adam 1e-3. Samples come "
            "from a 20-component Gaussian mixture fitted to the codes of 10,000 training "
            "images (Ghosh et al. 2020), at temperature 1.3: from N(0, I) a plain AE's samples "
            "are noise. At equal CPU time the 64-D code beat 16-D and 32-D ones in FID and "
            "recall, and the temperature helps both (FID 28.1 → 19.1, recall 0.51 → 0.70 after "
            "five minutes); grids come every 2,500 steps, as each refits the mixture (about 7 s "
            "on two cores).",
            {
                "family": "ae",
                "data_range": "unit",
                "latent": {"dim": 64, "prior": "fitted", "components": 20, "temperature": 1.3},
                "encoder": {"layers": conv_e},
                "generator": {"layers": unit_out},
                "loss": {"recon": "bce-sum"},
                "opt_g": {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999]},
            },
            # about five minutes on two cores; each grid and checkpoint refits the prior
            DEFAULT_TRAIN | {"steps": 5000, "sample_every": 2500, "checkpoint_every": 2500},
        ),
        _run(
            "vae",
            f"MLP VAE with a 32-D Gaussian code: {pixels}→512→256 LeakyReLU encoder, the "
            "mirror decoder; the negative ELBO with a calibrated Gaussian decoder (one "
            "variance, the batch's mean squared error: Rybkin et al. 2021); Adam 1e-3, batch "
            "128. Samples come from a 10-component Gaussian mixture fitted to the mean codes "
            "of 10,000 training images, at temperature 1.4. At equal CPU time the calibrated "
            "decoder, the fitted prior and the wider code cut the FID of a Bernoulli decoder "
            "with an 8-D code sampled from N(0, I) by two thirds and double its recall, and the "
            "temperature takes another third off the FID (40.5 → 27.0, recall 0.42 → 0.64 "
            "after five minutes); with a Bernoulli decoder the MLP also beat a conv VAE at "
            "equal time.",
            {
                "family": "vae",
                "data_range": "unit",
                "latent": {"dim": 32, "prior": "fitted", "components": 10, "temperature": 1.4},
                "encoder": {"layers": ["flatten", "fc 512", "lrelu 0.2", "fc 256", "lrelu 0.2"]},
                "generator": {
                    "layers": ["fc 256", "lrelu 0.2", "fc 512", "lrelu 0.2", f"fc {pixels}", img]
                },
                "loss": {"recon": "gaussian"},
                "opt_g": {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999]},
            },
            # about five minutes on two cores; each grid and checkpoint refits the prior
            DEFAULT_TRAIN
            | {"batch_size": 128, "steps": 35000, "sample_every": 5000, "checkpoint_every": 10000},
        ),
        _default_gan(
            "gan",
            "MLP GAN: G 256-512-1024 with batch norm and LeakyReLU, D 512-256 "
            "LeakyReLU, N(0, I) noise of 64, non-saturating loss, Adam β (0, 0.999) at 5e-4 "
            "for G and 1e-3 for D, feature matching on D's hidden layer (weight 0.03), G's "
            "update reusing D's noise and G(z), EMA of G (0.999), samples at temperature 1.6; "
            "22,000 steps, about 5 minutes on two cores. Tuned for FID per wall-clock minute "
            "on a CPU: batch norm in G and no spectral norm in D (FID after 90 s 193 → 99), "
            "Adam 5e-4 (→ 91), filling the five minutes (FID 49 over two seeds), the "
            "temperature (FID 44.7 → 28.7, recall 0.15 → 0.23 after five minutes) and Adam "
            "without momentum (after 150 s, two seeds: FID 47.4 / 43.6 → 36.7 / 39.7, recall "
            "0.10 / 0.08 → 0.18 / 0.23), then D at twice G's rate (five minutes, two seeds: "
            "FID 29.4 / 28.5 → 24.1 / 28.5, recall 0.28 / 0.33 → 0.36 / 0.38), then feature "
            "matching (FID 24.2 / 28.5 → 26.6 / 25.5, recall 0.37 / 0.38 → 0.41 / 0.42 at "
            "temperature 1.3). It samples at 1.6, where recall passes 0.5 on both seeds (FID "
            "35.1 / 34.1), rather than at its best FID (1.3): an MLP GAN's weakness is "
            "collapse, and this default errs towards coverage.",
            {
                "latent": {"dim": 64, "dist": "normal", "temperature": 1.6},
                "generator": {
                    "layers": [
                        "fc 256 nobias",
                        "bn",
                        "lrelu 0.2",
                        "fc 512 nobias",
                        "bn",
                        "lrelu 0.2",
                        "fc 1024 nobias",
                        "bn",
                        "lrelu 0.2",
                        f"fc {pixels}",
                        "tanh",
                        img,
                    ]
                },
                "discriminator": {
                    "layers": ["flatten", "fc 512", "lrelu 0.2", "fc 256", "lrelu 0.2", "fc 1"]
                },
                "opt_g": ADAM_B0 | {"lr": 5e-4, "betas": [0.0, 0.999]},
                "opt_d": ADAM_B0 | {"lr": 1e-3, "betas": [0.0, 0.999]},
                "loss": {"feature_matching": 0.03},
                "reuse_noise": True,
            },
            {"steps": 22000, "sample_every": 2000, "checkpoint_every": 5000},
        ),
        _default_gan(
            "dcgan",
            f"DCGAN for {size}×{size}: G fc {b}·{b}·{min(32 * 2**n, MAX_WIDTH)} → {twice} 4×4 "
            f"stride-2 transposed convs ({g_up}) → 3×3 conv, batch norm; D {twice} 4×4 stride-2 "
            f"convs ({d_down}), batch norm on {bn_where}, then a hidden layer of 128; "
            "non-saturating loss, Adam β (0, 0.99), EMA of G (0.999), samples at temperature "
            "1.2. Tuned for "
            "quality per wall-clock minute on a CPU: batch 16 and Adam 1e-3 β1 0.5 (more, "
            "faster updates beat bigger batches: FID 52 after 150 s on two cores, against 145 "
            "with batch 64 and 2e-4), then G at 2e-3 (FID 5 lower on two seeds), G's update "
            "reusing D's noise and G(z), D's hidden layer (FID 55 → 32 after 150 s, two seeds), "
            "Adam without momentum, β (0, 0.99) (FID 29 → 22 after 150 s), and the "
            "temperature (FID 21.2 → 19.4, recall 0.70 → 0.76 after five minutes); "
            "7,000 steps, about 5 minutes on two cores.",
            {
                "latent": {"dim": 64, "dist": "normal", "temperature": 1.2},
                "generator": {"layers": tanh_out},
                "discriminator": {"layers": conv_d_bn + D_HEAD},
                "opt_g": ADAM_B0 | {"lr": 2e-3},
                "opt_d": ADAM_B0 | {"lr": 1e-3},
                "reuse_noise": True,
            },
            {"steps": 7000, "batch_size": 16, "sample_every": 1000, "checkpoint_every": 2000},
        ),
        _default_gan(
            "wgan",
            "WGAN with weight clipping (c 0.02) on the DCGAN networks, batch norm in "
            "the critic as in Arjovsky et al.'s DCGAN critic; RMSprop 8e-4 for G and 2e-4 for "
            "the critic, one critic update per G update, batch 16, G's update reusing the "
            "critic update's noise, samples at temperature 1.2; 7,000 steps, about 5 minutes "
            "on two cores. Chosen for "
            "quality per wall-clock minute on a CPU: at equal time one critic update per G "
            "update beats two (FID 19-20% lower on two seeds after 150 s), and G at four "
            "times the critic's rate beats equal rates (after 150 s, two seeds: FID 108 / 107 "
            "→ 68 / 76, recall 0.45 / 0.43 → 0.51 / 0.51), and clipping at 0.02 beats 0.01 "
            "(after 150 s, two seeds: FID 65 / 72 → 58 / 63; 0.005: 100); the former RMSprop "
            "5e-5, 5 critic updates, c 0.01 and batch 64 scored FID 319 and recall 0.01 in "
            "five minutes. The temperature took the FID from 44.0 to 38.3 and recall from 0.62 "
            "to 0.68 after five minutes (seed 0).",
            {
                "latent": {"dim": 64, "dist": "normal", "temperature": 1.2},
                "generator": {"layers": tanh_out},
                "discriminator": {"layers": conv_d_bn + ["fc 1"]},
                "loss": {"gan": "wasserstein", "clip": 0.02},
                "opt_g": {"name": "rmsprop", "lr": 8e-4},
                "opt_d": {"name": "rmsprop", "lr": 2e-4},
                "reuse_noise": True,
            },
            {"steps": 7000, "batch_size": 16},
        ),
        _default_gan(
            "wgan-gp",
            "WGAN-GP (Gulrajani et al. 2017) on the DCGAN networks (the critic without batch "
            "norm): gradient penalty λ 10, 2 critic updates per G update, Adam 1e-3 β (0, "
            "0.9), batch 16, G's update reusing the last critic update's noise, samples at "
            "temperature 1.1; 3,000 steps, about 5 minutes on two cores. Tuned for quality per "
            "wall-clock minute on a CPU (the former batch 64, 5 critic updates and 1e-4 stopped "
            "at 600 steps in five minutes): FID 277 → 93, recall 0.07 → 0.41 (two seeds), then "
            "the critic's hidden layer (FID 91 → 67 after 150 s), then Adam without momentum "
            "(2,500 steps, two seeds, at temperature 1.2: FID 49.4 / 65.5 → 29.6 / 38.8) and "
            "the temperature; still short of the DCGAN, as each critic update pays for the "
            "penalty's double backward.",
            {
                "latent": {"dim": 64, "dist": "normal", "temperature": 1.1},
                "generator": {"layers": tanh_out},
                "discriminator": {"layers": conv_d + D_HEAD},
                "loss": {"gan": "wasserstein", "gp_weight": 10.0},
                "opt_g": {"name": "adam", "lr": 1e-3, "betas": [0.0, 0.9]},  # β2 0.9 beat 0.99
                "opt_d": {"name": "adam", "lr": 1e-3, "betas": [0.0, 0.9]},
                "n_critic": 2,
                "reuse_noise": True,
            },
            {"steps": 3000, "batch_size": 16},
        ),
        _default_gan(
            "cgan",
            "Class-conditional DCGAN: one-hot label beside z in G, projection "
            "discriminator (Miyato & Koyama 2018) on the DCGAN trunk; non-saturating loss, EMA "
            "of G. Tuned as the DCGAN for quality per wall-clock minute on a CPU: batch 16, "
            "Adam 1e-3 β1 0.5, G's update reusing D's noise and G(z) (after 150 s on two cores "
            "FID 66 → 30, label accuracy 0.77 → 0.89, against batch 64 and 2e-4); 5,000 steps, "
            "about 5 minutes on two cores. It samples at temperature 1: wider draws lower its "
            "FID but cost label accuracy (five minutes, seed 0: 0.90 at 1, 0.88 at 1.1, 0.85 "
            "at 1.2).",
            {
                "conditional": True,
                "generator": {"layers": tanh_out},
                "discriminator": {"layers": conv_d_bn + D_HEAD[:-1]},  # then the projection
                "opt_g": ADAM_GAN | {"lr": 1e-3},
                "opt_d": ADAM_GAN | {"lr": 1e-3},
                "reuse_noise": True,
            },
            {
                "steps": 5000,
                "batch_size": 16,
                "grid_size": 100,
                "sample_every": 1000,
                "checkpoint_every": 2000,
            },
        ),
        _run(
            "bigan",
            "BiGAN/ALI with conv E and G and a joint (x, z) discriminator with "
            "spectral norm and dropout; non-saturating loss, EMA of G, Adam β (0, 0.99), "
            "samples at temperature 1.2. Tuned "
            "for quality per wall-clock minute on a CPU: batch 16 and Adam 1e-3 β1 0.5 (after "
            "150 s on two cores FID 250 → 112, recall 0.03 → 0.24, against batch 64 and 2e-4), "
            "then E and G at 2e-3 (FID 21-28 lower on two seeds after 150 s, level after five "
            "minutes), then Adam without momentum, β (0, 0.99) (five minutes, two seeds: FID "
            "47.0 / 38.5 → 31.4 / 30.2, recall 0.39 / 0.42 → 0.51 / 0.52), and the "
            "temperature (FID 31.1 → 27.0, recall 0.52 → 0.58 after five minutes, seed 0); "
            "2,600 steps, about 5 minutes on two cores.",
            {
                "family": "bigan",
                "data_range": "tanh",
                "latent": {"dim": 64, "temperature": 1.2},
                "encoder": {"layers": conv_e},
                "generator": {"layers": tanh_out},
                "discriminator": {
                    "layers": ["fc 512", "lrelu 0.2", "dropout 0.2", "fc 1"],
                    "x_layers": conv_d,
                    "z_layers": ["fc 256", "lrelu 0.2"],
                    "spectral_norm": True,
                },
                "opt_g": ADAM_B0 | {"lr": 2e-3},
                "opt_d": ADAM_B0 | {"lr": 1e-3},
                "ema": 0.999,
            },
            DEFAULT_TRAIN | {"steps": 2600, "batch_size": 16},
        ),
    ]
    for preset in presets:  # the saved config states the shape it was built for
        preset["description"] += sized
        preset["model"] |= {"image_size": size, "channels": channels}
    return presets


def _references() -> list[tuple[dict, str]]:
    """The reference presets, each with the default to use on images of another shape."""
    return [
        (_ae_000(False), "ae"),
        (_ae_000(True), "vae"),
        (_gan_000(False), "gan"),
        (_gan_000(True), "dcgan"),
        (_gan_001(), "gan"),
        (_dcgan_001(), "dcgan"),
        (_wgan_001(), "wgan"),
        (_gan_002(), "gan"),
        (_bigan_004(), "bigan"),
    ]


DEFAULT_NAMES = ("ae", "vae", "gan", "dcgan", "wgan", "wgan-gp", "cgan", "bigan")


def preset_names() -> list[str]:
    """Every preset name: gankit's defaults first, then the reference presets."""
    return list(DEFAULT_NAMES) + [p["preset"] for p, _ in _references()]


def get_preset(name: str, channels: int = 1, image_size: int = 28, shape_from: str = "") -> dict:
    """The preset's config as nested dicts (a fresh copy: safe to modify), for images of
    (channels, image_size, image_size): a default is built for them, a reference preset
    only takes the 1×28×28 images it was designed for. ``shape_from`` says where the shape
    came from (e.g. "the images of cifar10"), for the error messages."""
    where = f" ({shape_from})" if shape_from else ""
    if name in DEFAULT_NAMES:
        plan = conv_plan(image_size)
        if plan is None:
            near = nearest_sizes(image_size)
            raise ConfigError(
                f"the default {name!r} cannot be built for {image_size}×{image_size} images"
                f"{where}: its conv stacks double a b×b start (4 ≤ b ≤ 7) at least twice, "
                f"which reaches {', '.join(map(str, reachable_sizes(128)))} …; the nearest are "
                f"{' and '.join(map(str, near))}. Train at one of them with "
                + " or ".join(f"--set image_size={s}" for s in near)
                + " (the images are resized to it)"
            )
        table = {p["preset"]: p for p in _defaults(channels, image_size, plan)}
        return copy.deepcopy(table[name])
    references = {p["preset"]: (p, default) for p, default in _references()}
    if name not in references:
        names = preset_names()
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model or preset {name!r}.{hint} Known: {', '.join(names)}")
    preset, default = references[name]
    if (channels, image_size) != (1, 28):
        raise ConfigError(
            f"{name} is a faithful 28×28 grayscale design and is not built for "
            f"{channels}×{image_size}×{image_size} images{where}: use `{default}` instead, "
            "gankit's default of its family, which is built for the data's shape"
        )
    return copy.deepcopy(preset)
