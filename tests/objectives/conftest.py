"""Helpers for the objective tests: fake encoder outputs with a fixed seed."""

from __future__ import annotations

import pytest
import torch

from betavae.models.vae import VAEOutput


@pytest.fixture
def fake_output():
    """The factory :func:`make_fake_output`."""
    return make_fake_output


def make_fake_output(batch: int = 8, latents: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32,
                     pixels: int = 8) -> tuple[VAEOutput, torch.Tensor]:
    """A :class:`VAEOutput` with random posteriors, a reparameterised z, and a binary batch ``x``."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latents, generator=g, dtype=dtype)
    logvar = 0.5 * torch.randn(batch, latents, generator=g, dtype=dtype)
    z = mu + torch.randn(batch, latents, generator=g, dtype=dtype) * torch.exp(0.5 * logvar)
    recon = torch.randn(batch, 1, pixels, pixels, generator=g, dtype=dtype)
    x = (torch.rand(batch, 1, pixels, pixels, generator=g) > 0.5).to(dtype)
    return VAEOutput(mu=mu, logvar=logvar, z=z, recon=recon), x
