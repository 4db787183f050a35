"""gankit: train, evaluate and compare classic generative image models.

>>> import gankit
>>> run = gankit.train("dcgan", data="fashion-mnist", steps=500)   # doctest: +SKIP
>>> gankit.show_grid(run.sample(64))                               # doctest: +SKIP
"""

from gankit.api import build, configure, evaluate, load_run, resume, train
from gankit.tools.sweep import sweep, sweep_report  # Optuna is imported on use
from gankit.version import __version__
from gankit.viz import show_grid

__all__ = [
    "build",
    "configure",
    "evaluate",
    "load_run",
    "resume",
    "show_grid",
    "sweep",
    "sweep_report",
    "train",
    "__version__",
]
