"""gankit: train, evaluate and compare classic generative image models.

>>> import gankit
>>> run = gankit.train("dcgan", data="fashion-mnist", steps=500)   # doctest: +SKIP
>>> gankit.show_grid(run.sample(64))                               # doctest: +SKIP
"""

__version__ = "0.1.0"

from gankit.api import build, configure, evaluate, load_run, resume, train  # noqa: E402
from gankit.sweep import sweep, sweep_report  # noqa: E402  (Optuna is imported on use)
from gankit.viz import show_grid  # noqa: E402

__all__ = ["build", "configure", "evaluate", "load_run", "resume", "show_grid", "sweep",
           "sweep_report", "train", "__version__"]
