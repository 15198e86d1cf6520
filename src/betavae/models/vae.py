"""The VAE module: maps images to a diagonal Gaussian posterior and latents back to images.

It holds no loss code: objectives (``betavae.objectives``) turn a :class:`VAEOutput` into a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from betavae.errors import ConfigError
from betavae.models.architectures import ARCHITECTURES
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


def build_model(arch: str, latents: int, image_shape: tuple[int, int, int]) -> VAE:
    """A :class:`VAE` of architecture ``arch`` for images ``(C, H, W)`` and ``latents`` dims."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture '{arch}'; choose one of: {', '.join(ARCHITECTURES)}.")
    if latents < 1:
        raise ConfigError(f"latents must be at least 1, got {latents}.")
    encoder_cls, decoder_cls, _ = ARCHITECTURES[arch]
    return VAE(encoder_cls(image_shape, latents), decoder_cls(image_shape, latents), latents)


def is_convolutional(arch: str) -> bool:
    """Whether ``arch`` benefits from the channels-last memory format."""
    return ARCHITECTURES[arch][2]
