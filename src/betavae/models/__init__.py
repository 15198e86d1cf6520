"""Models: encoders, decoders and the VAE module."""

from betavae.models.architectures import ARCHITECTURES, SUPPORTED_SIZES
from betavae.models.vae import VAE, VAEOutput, build_model, init_output_bias, is_convolutional, model_from_spec, model_spec

__all__ = ["ARCHITECTURES", "SUPPORTED_SIZES", "VAE", "VAEOutput", "build_model", "init_output_bias", "is_convolutional", "model_from_spec",
           "model_spec"]
