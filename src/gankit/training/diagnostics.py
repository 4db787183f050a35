"""Plain-words warnings while a GAN trains: mode collapse starting, and D winning outright.

:class:`Alarms` reads the rows the trainer logs (losses, D outputs) and the rows of each
evaluation (class coverage); it returns the warnings to show, each at most once per episode,
so a long run is not flooded with the same sentence.
"""

from __future__ import annotations

D_LOST_G = 0.05  # mean D(G(z)) below this: D rejects nearly every sample
RISING_ROWS = 3  # G's loss rising over this many consecutive logged rows


class Alarms:
    """Watches logged rows and evaluations; :meth:`on_log`/:meth:`on_eval` return warnings."""

    def __init__(self, num_classes: int | None = None, adversarial: bool = True):
        self.num_classes, self.adversarial = num_classes, adversarial
        self._window: list[tuple[float, float]] = []  # (D(G(z)), G's loss) of the last rows
        self._d_wins = False  # inside a "D wins" episode (warned already)
        self._coverage: list[int] = []
        self._collapsing = False

    def on_log(self, row: dict) -> list[str]:
        """Warnings from one logged training row."""
        fake, g_loss = row.get("D(G(z))"), row.get("loss/G")
        if fake is None or g_loss is None:
            return []
        self._window = (self._window + [(fake, g_loss)])[-(RISING_ROWS + 1) :]
        if fake >= 2 * D_LOST_G:
            self._d_wins = False  # the episode is over; a new one may warn again
        sustained = (
            len(self._window) == RISING_ROWS + 1
            and all(f < D_LOST_G for f, _ in self._window)
            and all(b[1] > a[1] for a, b in zip(self._window[:-1], self._window[1:], strict=True))
        )
        if sustained and not self._d_wins:
            self._d_wins = True
            return [
                f"step {row['step']}: D is winning outright: D(G(z)) has stayed below "
                f"{D_LOST_G} (now {fake:.3f}) while G's loss rose from "
                f"{self._window[0][1]:.3g} to {g_loss:.3g} over the last {RISING_ROWS} "
                "logs, so G gets little signal. Try a lower D learning rate (--lr-d), "
                "label smoothing (--set label_smoothing=0.1), spectral norm on D or a "
                "Wasserstein loss (wgan-gp)."
            ]
        return []

    def on_eval(self, row: dict) -> list[str]:
        """Warnings from one evaluation row (``eval/classes_covered`` …)."""
        covered = row.get("eval/classes_covered")
        if covered is None:
            return []
        previous, self._coverage = self._coverage, self._coverage + [covered]
        if not previous:
            return []
        peak = max(previous)
        falling = covered < peak and (peak - covered >= 2 or previous[-1] < peak)
        if not falling:
            self._collapsing = False
            return []
        if self._collapsing:
            return []
        self._collapsing = True
        total = f"/{self.num_classes}" if self.num_classes else ""
        advice = (
            "consider stopping, more D updates (--set n_critic=2), a lower G learning "
            "rate, or wgan-gp"
            if self.adversarial
            else "an autoencoder's samples from "
            "the prior cover the classes only as well as its codes fill the prior: a VAE "
            "(or a larger KL weight) fixes that"
        )
        return [
            f"step {row['step']}: mode collapse may be starting: the samples now cover "
            f"{covered}{total} classes, down from {peak}{total} (see the class histogram "
            "in metrics.jsonl). The best checkpoint so far is kept as checkpoints/"
            f"best.safetensors; {advice}."
        ]
