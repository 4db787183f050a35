"""Feature networks for data without labels: a pretext task trains the evaluator's body on
the images alone, k-means on its features makes pseudo-classes, and a linear head trained on
the frozen features to predict them gives the class probabilities. The evaluator keeps its
form (body + linear head), so every metric, mode coverage included, works unchanged: over
clusters instead of classes.

Two pretext tasks, found through `PRETEXTS`:

- ``rotation`` (Gidaris et al. 2018): every image turned by 0, 90, 180 and 270 degrees, and
  a 4-way linear head on the body's features says which turn it got.
- ``contrastive`` (SimCLR, Chen et al. 2020): two random views of every image (crop and
  rescale, flip, brightness/contrast/saturation jitter, done on the batch with plain torch
  ops); a projection head maps the body's features to a sphere where each view must find
  its partner among the batch (the NT-Xent loss).

Chosen by measurement: ``rotation``. Each candidate trained the 32×32 body of
`evaluator.body_layers` on the 6,000 tinted Fashion-MNIST garments of tests/conftest.py
(3×32×32, labels hidden), on one thread; the k-means clusters and head followed. FID of
2,000 held-out images of each kind (one class: trousers) against 2,000 other held-out ones,
with its ratio to the real/real FID; purity: the share of training images whose cluster's
most common hidden label is theirs::

    candidate (steps × batch)  build  real  blurred σ=1  noised σ=25  one class    noise      purity
    rotation 400 × 64 (chosen)  49 s  0.74  15.8 (21×)   34.6 (47×)   77.7 (105×)  439 (593×)  0.84
    rotation 600 × 64           76 s  0.90  20.7 (23×)   42.6 (47×)    114 (126×)  659 (730×)  0.79
    contrastive 400 × 128       61 s  1.86   3.9 (2.1×)   3.2 (1.7×)   395 (212×)  364 (195×)  0.89
    contrastive 600 × 128       80 s  2.18   5.4 (2.5×)   5.6 (2.6×)   473 (217×)  389 (178×)  0.87
    contrastive, no jitter 400  51 s  2.47  31.8 (13×)    5.4 (2.2×)   447 (181×) 2123 (860×)  0.72

Rotation features see blur and pixel noise (21× and 47× the real FID) where SimCLR's,
trained to ignore photometric change, hardly move (about 2×), and with colour jitter SimCLR
even puts uniform noise nearer the real images than a one-class set; without jitter the order
returns but added noise stays near invisible (2.2×). A linear probe of the hidden labels on
the frozen features (trained on the 6,000, scored on 2,000 held-out) cannot choose: 99.7% to
100% for all, as the class colours make the labels linearly obvious. Clustering the top 32
principal components, whitened, rather than the raw features raised the rotation clusters'
purity from 0.61 to 0.84 (SimCLR's: 0.83 to 0.89): in the raw features a few directions
dominate (the first component's spread is 26× the 32nd's). Larger images take fewer images
per step, for the same pixels per step: at 64×64, 400 × 16 builds in 57 s with margins like
those of 400 × 64 (217 s): blurred 24× (33×), noised 54× (81×), one class 198× (175×),
noise 780× (888×). 10,000 images at 32×32 build in 39 s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankit.notices import notice


class Pretext(nn.Module):
    """A task that trains a feature body without labels: its own head on the body's
    features, and the loss of one batch."""

    def loss(self, body: nn.Module, x: Tensor, gen: torch.Generator) -> Tensor:
        """The task's loss on standardised images x (B, C, S, S); ``gen`` draws its randomness."""
        raise NotImplementedError


class Rotation(Pretext):
    """Predict which of four turns an image got (Gidaris et al. 2018)."""

    def __init__(self, feature_dim: int, recipe: dict):
        super().__init__()
        self.head = nn.Linear(feature_dim, 4)

    def loss(self, body: nn.Module, x: Tensor, gen: torch.Generator) -> Tensor:
        turned = torch.cat([x.rot90(k, (2, 3)) for k in range(4)])  # (4B, C, S, S)
        target = torch.arange(4, device=x.device).repeat_interleave(len(x))  # (4B,)
        return F.cross_entropy(self.head(body(turned)), target)


class Contrastive(Pretext):
    """Find each image's other view in the batch (SimCLR, Chen et al. 2020)."""

    def __init__(self, feature_dim: int, recipe: dict):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(feature_dim, feature_dim),
            nn.ReLU(),
            nn.Linear(feature_dim, recipe["projection"]),
        )
        self.temperature, self.jitter = recipe["temperature"], recipe["jitter"]

    def loss(self, body: nn.Module, x: Tensor, gen: torch.Generator) -> Tensor:
        views = torch.cat([augment(x, gen, self.jitter), augment(x, gen, self.jitter)])
        z = F.normalize(self.head(body(views)), dim=1)  # (2B, D) on the unit sphere
        return nt_xent(z, self.temperature)


# The pretext tasks, by the name a recipe gives as "pretext".
PRETEXTS: dict[str, type[Pretext]] = {"rotation": Rotation, "contrastive": Contrastive}


def nt_xent(z: Tensor, temperature: float) -> Tensor:
    """NT-Xent of unit rows z (2B, D) where rows i and i + B are two views of one image:
    the mean over rows of −log softmax_j(z_i·z_j/τ) at the partner, j ≠ i (Chen et al.
    2020, eq. 1)."""
    n = len(z) // 2
    sim = z @ z.T / temperature  # (2B, 2B)
    self_pairs = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_pairs, -math.inf)
    partner = (torch.arange(len(z), device=z.device) + n) % len(z)  # (2B,)
    return F.cross_entropy(sim, partner)


def augment(x: Tensor, gen: torch.Generator, jitter: float = 0.4) -> Tensor:
    """A random view of each standardised image x (B, C, S, S): a crop of 55–100% of the
    side at a random place, rescaled to S×S (bilinear, reflected at the borders), flipped
    left-right half the time, then brightness ±jitter, contrast ×(1 ± jitter) and, for
    colour, saturation ×(1 ± jitter) (in standardised units, per image)."""
    b = len(x)

    def uniform(low: float, high: float) -> Tensor:
        return (low + (high - low) * torch.rand(b, generator=gen)).to(x.device)  # (B,)

    scale = uniform(0.55, 1.0)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device)  # output grid → input coordinates
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, 0, 2] = (1 - scale) * uniform(-1, 1)
    theta[:, 1, 2] = (1 - scale) * uniform(-1, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, S, S, 2)
    out = F.grid_sample(x, grid, "bilinear", "reflection", align_corners=False)
    mean = out.mean((1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    out = (out - mean) * uniform(1 - jitter, 1 + jitter).view(-1, 1, 1, 1) + mean
    if x.shape[1] == 3:
        grey = out.mean(1, keepdim=True)  # (B, 1, S, S)
        out = grey + (out - grey) * uniform(1 - jitter, 1 + jitter).view(-1, 1, 1, 1)
    return out + uniform(-jitter, jitter).view(-1, 1, 1, 1)


def train_pretext(
    body: nn.Module,
    pretext: Pretext,
    images: Tensor,
    normalise: Callable[[Tensor], Tensor],
    recipe: dict,
    hold: Callable[[], None],
    progress: bool = True,
) -> dict:
    """Train ``body`` (with ``pretext``'s head) on uint8 images (N, C, S, S) for the recipe's
    steps: Adam with a one-cycle schedule, batches drawn in seeded epochs. Returns the last
    loss (mean over the final tenth of the steps) and the seconds taken."""
    device = next(body.parameters()).device
    params = list(body.parameters()) + list(pretext.parameters())
    opt = torch.optim.Adam(params, recipe["max_lr"], foreach=True)
    steps = recipe["steps"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe["max_lr"], total_steps=steps)
    gen = torch.Generator().manual_seed(recipe["seed"])
    bs = min(recipe["batch_size"], len(images))
    body.train()
    pretext.train()
    order, at, tail, started = (
        torch.randperm(len(images), generator=gen),
        0,
        [],
        time.perf_counter(),
    )
    for step in range(steps):
        hold()
        if at + bs > len(order):
            order, at = torch.randperm(len(images), generator=gen), 0
        x = normalise(images[order[at : at + bs]].to(device))  # (B, C, S, S)
        at += bs
        loss = pretext.loss(body, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if progress and (step + 1) % max(1, steps // 5) == 0:
            notice(
                f"{recipe['pretext']} pretext step {step + 1}/{steps}: loss {loss.item():.3f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    body.eval()
    return {"pretext_loss": sum(tail) / len(tail), "seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------- pseudo-classes


def kmeans(
    x: Tensor, k: int, seed: int = 0, restarts: int = 4, iterations: int = 100
) -> tuple[Tensor, Tensor]:
    """k-means of rows x (N, F): (centres (k, F), cluster of each row (N,)), the best of
    ``restarts`` runs of Lloyd's algorithm from seeded k-means++ centres (Arthur &
    Vassilvitskii 2007), in float64. Clusters are numbered by size, largest first."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= N rows; got k={k}, N={len(x)}")
    x = x.double().cpu()
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(restarts):
        centres = _plus_plus(x, k, gen)
        assign = torch.full((len(x),), -1)
        for _ in range(iterations):
            d2 = torch.cdist(x, centres).square_()  # (N, k)
            new = d2.argmin(1)
            if torch.equal(new, assign):
                break
            assign = new
            for c in range(k):
                members = assign == c
                if members.any():
                    centres[c] = x[members].mean(0)
                else:  # an empty cluster takes the row farthest from its centre
                    far = d2.gather(1, assign[:, None]).squeeze(1).argmax()
                    centres[c] = x[far]
        inertia = float(torch.cdist(x, centres).square_().min(1).values.sum())
        if best is None or inertia < best[0]:
            best = (inertia, centres.clone(), assign.clone())
    _, centres, assign = best
    sizes = torch.bincount(assign, minlength=k)
    order = torch.argsort(-sizes, stable=True)  # new number → old
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k)  # old number → new
    return centres[order].float(), rank[assign]


def _plus_plus(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ centres (k, F): the first uniformly, each next with probability ∝ its
    squared distance to the nearest centre so far."""
    centres = [x[torch.randint(len(x), (1,), generator=gen)].squeeze(0)]
    d2 = (x - centres[0]).square().sum(1)  # (N,)
    for _ in range(1, k):
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centres.append(x[torch.multinomial(weights, 1, generator=gen)].squeeze(0))
        d2 = torch.minimum(d2, (x - centres[-1]).square().sum(1))
    return torch.stack(centres)  # (k, F)


def whitening(features: Tensor, dims: int) -> tuple[Tensor, Tensor]:
    """The map to the top ``dims`` principal components of features (N, F), each scaled to
    unit variance: (mean (F,), projection (d, F)) with z = (x − mean) @ projectionᵀ, in
    float64. k-means there weighs every direction of variation alike, where raw features
    let a few dominant ones (pose, size) decide the clusters."""
    x = features.double()
    mean = x.mean(0)  # (F,)
    _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)  # s: (F,), vt: (F, F)
    d = min(dims, len(s))
    scale = s[:d].clamp_min(1e-9 * s[0]) / math.sqrt(max(len(x) - 1, 1))  # component stds
    sign = torch.where(vt[:d].sum(1) < 0, -1.0, 1.0).to(vt)  # SVD signs are arbitrary
    return mean, vt[:d] * (sign / scale)[:, None]  # (F,), (d, F)


def whiten(features: Tensor, mean: Tensor, projection: Tensor) -> Tensor:
    """Features (N, F) in the coordinates `whitening` made: (x − mean) @ projectionᵀ (N, d),
    float64."""
    return (features.double() - mean.to(features.device)) @ projection.T.to(features.device)


def fit_head(
    head: nn.Linear,
    features: Tensor,
    targets: Tensor,
    mean: Tensor,
    projection: Tensor,
    steps: int = 300,
    lr: float = 1e-2,
) -> float:
    """Set the linear ``head`` to predict ``targets`` (N,) from frozen features (N, F): a
    linear classifier trained on their whitened form z = (x − mean) @ projectionᵀ (full-batch
    Adam on the cross-entropy), folded back into one map of x. Returns its accuracy on them."""
    z = whiten(features, mean, projection).float()  # (N, d)
    mean, projection = mean.to(features.device), projection.to(features.device)
    targets = targets.to(features.device)
    inner = nn.Linear(z.shape[1], head.out_features).to(features.device)
    opt = torch.optim.Adam(inner.parameters(), lr)
    for _ in range(steps):
        loss = F.cross_entropy(inner(z), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        weight = inner.weight.double() @ projection  # (K, F): W z = W P (x − mean)
        head.weight.copy_(weight)
        head.bias.copy_(inner.bias.double() - weight @ mean)
        return (head(features).argmax(1) == targets).float().mean().item()


def nearest_centre(z: Tensor, centres: Tensor) -> Tensor:
    """The cluster (nearest centre) of each row (N, d) → (N,)."""
    return torch.cdist(z.double(), centres.to(z.device).double()).argmin(1)
