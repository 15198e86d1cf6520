"""Training: the config, the loop, checkpoints, logging and diagnostics."""

from betavae.training.config import TrainConfig
from betavae.training.loop import flush_denormals, load, resume, train

__all__ = ["TrainConfig", "flush_denormals", "load", "resume", "train"]
