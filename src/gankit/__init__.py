"""gankit: train, evaluate and compare classic generative image models."""

__version__ = "0.1.0"
