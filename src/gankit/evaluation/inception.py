"""FID on Inception-v3 features (through torch-fidelity), for comparison with published numbers."""

from __future__ import annotations

import torch
from torch import Tensor

from gankit.errors import GankitError


def inception_fid(fake: Tensor, real: Tensor) -> dict:
    """FID on Inception-v3 features through torch-fidelity, for comparison with papers.

    Needs the optional package ``torch-fidelity`` and its Inception weights (downloaded once
    to the torch hub cache); without either this raises a GankitError saying which.
    """
    try:
        import torch_fidelity
    except ImportError:
        raise GankitError(
            "Inception FID needs the optional package torch-fidelity (pip install "
            "torch-fidelity) and, the first time, internet access to fetch its Inception "
            "weights; gankit's own FID (the default) needs neither"
        ) from None

    class _Images(torch.utils.data.Dataset):
        def __init__(self, images: Tensor):
            self.images = images

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int) -> Tensor:
            x = self.images[i]
            return x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x  # grey → RGB, uint8

    try:
        out = torch_fidelity.calculate_metrics(
            input1=_Images(fake.cpu()),
            input2=_Images(real.cpu()),
            fid=True,
            verbose=False,
            cuda=torch.cuda.is_available(),
        )
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        raise GankitError(
            "Inception FID failed: torch-fidelity could not load or fetch its Inception "
            f"weights ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Download them once on a machine with internet access (they go to "
            "~/.cache/torch/hub/checkpoints) or use gankit's own FID"
        ) from None
    return {"inception_fid": float(out["frechet_inception_distance"])}
