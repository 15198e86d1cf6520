"""Diagonal-Gaussian maths shared by every objective."""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2.0 * math.pi)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per dimension, in nats; same shape as ``mu``.

    Closed form (Kingma & Welling 2014, appendix B): 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1).
    """
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1.0)


def log_normal_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) elementwise (broadcasting), in nats."""
    return -0.5 * (_LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A sample of N(mu, exp(logvar)) that is differentiable in ``mu`` and ``logvar``."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)
