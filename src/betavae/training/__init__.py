"""Training: the config, the loop, checkpoints, logging and diagnostics."""

from betavae.training.config import TrainConfig
from betavae.training.loop import load, resume, train

__all__ = ["TrainConfig", "load", "resume", "train"]
