"""betavae: disentangled representation learning with the β-VAE and its successors."""

from betavae.training import TrainConfig, flush_denormals, load, resume, train
from betavae.training.parallel import train_many
from betavae.training.config import recipe_config

__version__ = "0.1.0"

__all__ = ["TrainConfig", "__version__", "flush_denormals", "load", "recipe_config", "resume", "train", "train_many"]
