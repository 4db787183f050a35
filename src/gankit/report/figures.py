"""Figures drawn from a trained model for its report: an interpolation strip and, for
models with an encoder, the latent plot — written to the run folder's ``figures/``."""

from __future__ import annotations

from pathlib import Path

from gankit.data import Dataset
from gankit.models import Reconstructing
from gankit.runs import RUN_FIGURES, Run
from gankit.viz import plot_latent, plot_manifold, save_grid

LATENT_IMAGES = 2000  # images whose codes the report's latent plot shows


def plot_codes(run: Run, data: Dataset, path: str | Path) -> list[Path]:
    """The codes of ``data`` coloured by class (``gankit latent``); a VAE with a 2-D code
    also gets its decoded manifold grid (``PATH-manifold.png``). Returns the files."""
    path = Path(path)
    labels = data.labels.numpy() if data.labels is not None else None
    written = [
        plot_latent(
            run.codes(data.images).numpy(),
            labels,
            path,
            data.classes,
            title=f"{run.config.preset}: codes of {len(data)} {data.name} images",
        )
    ]
    mc = run.config.model
    if mc.family == "vae" and mc.latent.dim == 2:
        manifold = path.with_name(path.stem + "-manifold.png")
        written.append(
            plot_manifold(lambda z: run.model.generate(z.to(run.model.device)).cpu(), manifold)
        )
    return written


def write_figures(run: Run, data: Dataset | None) -> list[Path]:
    """``figures/interpolation.png`` and, with an encoder and ``data``, ``figures/latent.png``
    (the codes of a fixed subset of ``data``). Returns the files written."""
    folder = run.path / RUN_FIGURES
    images = run.interpolations(rows=8, steps=10)
    written = [save_grid(images.cpu(), folder / "interpolation.png", nrow=10, scale=2)]
    if isinstance(run.model, Reconstructing) and data is not None:
        written += plot_codes(
            run, data.subset(min(LATENT_IMAGES, len(data))), folder / "latent.png"
        )
    return written
