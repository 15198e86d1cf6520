"""The VAE module: maps images to a diagonal Gaussian posterior and latents back to images.

It holds no loss code: objectives (``betavae.objectives``) turn a :class:`VAEOutput` into a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from betavae.errors import ConfigError
from betavae.models.architectures import ARCHITECTURES, WIDTH_PARAMETER
from betavae.objectives.gaussian import reparameterize


@dataclass
class VAEOutput:
    """What one forward pass produces; shapes for a batch of B images with z latents."""

    mu: torch.Tensor  # (B, z) posterior means
    logvar: torch.Tensor  # (B, z) posterior log-variances
    z: torch.Tensor  # (B, z) a reparameterised sample from q(z|x)
    recon: torch.Tensor  # (B, C, H, W) decoder output for z (logits for Bernoulli, means otherwise)


class VAE(nn.Module):
    """``encode(x) -> (mu, logvar)``, ``decode(z) -> logits``, ``forward(x) -> VAEOutput``."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latents: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latents = latents

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, 2z)
        mu, logvar = h[:, : self.latents], h[:, self.latents :]
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator)
        return VAEOutput(mu=mu, logvar=logvar, z=z, recon=self.decode(z))


def build_model(arch: str, latents: int, image_shape: tuple[int, int, int], width: int | None = None) -> VAE:
    """A :class:`VAE` of architecture ``arch`` for images ``(C, H, W)`` and ``latents`` dims.

    ``width`` sets the channels of every convolution of ``burgess`` (published: 32), the hidden
    units of ``mlp`` (published: 1200) or the channels of ``broadcast``'s decoder (default 32);
    ``None`` keeps the published width. ``locatello``'s widths are fixed by its definition.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture '{arch}'; choose one of: {', '.join(ARCHITECTURES)}.")
    if latents < 1:
        raise ConfigError(f"latents must be at least 1, got {latents}.")
    encoder_cls, decoder_cls, _ = ARCHITECTURES[arch]
    if width is None:
        return VAE(encoder_cls(image_shape, latents), decoder_cls(image_shape, latents), latents)
    if arch not in WIDTH_PARAMETER:
        raise ConfigError(f"architecture '{arch}' has fixed published widths; drop --width or use "
                          f"--arch {' or '.join(WIDTH_PARAMETER)}.")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ConfigError(f"width must be a whole number >= 1, got {width!r}.")
    encoder_parameter, decoder_parameter = WIDTH_PARAMETER[arch]
    encoder_kwargs = {encoder_parameter: width} if encoder_parameter else {}
    return VAE(encoder_cls(image_shape, latents, **encoder_kwargs),
               decoder_cls(image_shape, latents, **{decoder_parameter: width}), latents)


def model_spec(arch: str, latents: int, image_shape: tuple[int, int, int], width: int | None = None) -> dict:
    """The description stored with a model's weights, from which :func:`model_from_spec` rebuilds it."""
    spec = {"arch": arch, "latents": int(latents), "image_shape": [int(v) for v in image_shape]}
    if width is not None:
        spec["width"] = int(width)
    return spec


def model_from_spec(spec: dict) -> VAE:
    """The (untrained) model a :func:`model_spec` describes; raises KeyError/ValueError/TypeError if malformed."""
    width = spec.get("width")
    return build_model(spec["arch"], int(spec["latents"]), tuple(int(v) for v in spec["image_shape"]),
                       None if width is None else int(width))


def is_convolutional(arch: str) -> bool:
    """Whether ``arch`` benefits from the channels-last memory format."""
    return ARCHITECTURES[arch][2]


def init_output_bias(model: VAE, image: torch.Tensor) -> None:
    """Set the bias of the decoder's output layer so that, with the weights near zero, it draws ``image``
    ``(C, H, W)``, in [0, 1] (decoder outputs pass through a sigmoid): per pixel where the layer has a bias
    per pixel (mlp), else per channel, each channel's mean (the convolutional nets).

    Started from the data's mean image, training skips the phase in which the decoder learns that image
    while the KL, with nothing yet to pay for, falls to zero (docs/recipes.md).
    """
    layers = [m for m in model.decoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    if not layers or layers[-1].bias is None:
        raise ConfigError("this decoder has no output bias to initialise; use the default initialisation.")
    bias = layers[-1].bias
    with torch.no_grad():
        if bias.numel() == image.numel():
            bias.copy_(torch.logit(image.reshape(-1), eps=1e-6))
        elif bias.numel() == image.shape[0]:
            bias.copy_(torch.logit(image.reshape(image.shape[0], -1).mean(1), eps=1e-6))
        else:
            raise ConfigError(f"the decoder's output bias has {bias.numel()} values, which fit neither the image "
                              f"{tuple(image.shape)} nor its channels; use the default initialisation.")
