"""Reconstruction likelihoods p(x|z) as negative log-likelihoods per image, in nats.

The decoder outputs one real value per pixel, ``o``. Every likelihood reads it as follows:

``bernoulli``  p(x|z) = Bernoulli(sigmoid(o)):  NLL = sum_pixels BCE(o, x). Exact for binary data,
               and the usual choice (a cross-entropy) for grey levels in [0, 1].
``gaussian``   p(x|z) = N(sigmoid(o), sigma^2) with fixed sigma:
               NLL = sum_pixels [(x - m)^2 / (2 sigma^2) + log sigma + 0.5 log(2 pi)].
``laplace``    p(x|z) = Laplace(sigmoid(o), b) with fixed scale b:  NLL = sum_pixels [|x - m| / b + log(2 b)].

Constants are kept, so reconstruction values are true NLLs and comparable across runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from betavae.errors import ConfigError

LIKELIHOODS = ("bernoulli", "gaussian", "laplace")


def reconstruction_nll(output: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli", scale: float = 0.1) -> torch.Tensor:
    """Negative log-likelihood of ``x`` under the decoder ``output``, summed over pixels: ``(B,)``.

    ``scale`` is sigma for ``gaussian`` and b for ``laplace`` (ignored for ``bernoulli``).
    """
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(output, x, reduction="none")
    elif likelihood == "gaussian":
        mean = torch.sigmoid(output)
        nll = (x - mean).square() / (2.0 * scale * scale) + (math.log(scale) + 0.5 * math.log(2.0 * math.pi))
    elif likelihood == "laplace":
        mean = torch.sigmoid(output)
        nll = (x - mean).abs() / scale + math.log(2.0 * scale)
    else:
        raise ConfigError(f"unknown likelihood '{likelihood}'; choose one of: {', '.join(LIKELIHOODS)}.")
    return nll.flatten(1).sum(1)


def decoded_mean(output: torch.Tensor) -> torch.Tensor:
    """The image a decoder output stands for (the likelihood's mean), in [0, 1]."""
    return torch.sigmoid(output)
