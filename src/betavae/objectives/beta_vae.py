"""β-VAE (Higgins et al. 2017, "β-VAE: Learning basic visual concepts with a constrained
variational framework", eq. 4): minimise  E_q[-log p(x|z)] + β · KL(q(z|x) || N(0, I)).

β = 1 is the plain VAE (Kingma & Welling 2014); β > 1 presses q(z|x) toward the factorised prior.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from betavae.objectives.base import Objective

if TYPE_CHECKING:
    from betavae.models.vae import VAEOutput


class BetaVAE(Objective):
    name = "beta"

    def __init__(self, beta: float = 4.0, likelihood: str = "bernoulli", likelihood_scale: float = 0.1):
        super().__init__(likelihood, likelihood_scale)
        self.beta = beta

    @classmethod
    def from_config(cls, config, dataset_size: int) -> "BetaVAE":
        return cls(config.beta, config.likelihood, config.likelihood_scale)

    def weight_label(self) -> str:
        return f"β = {self.beta:g}"

    def beta_at(self, step: int) -> float:
        """The KL weight at ``step`` (constant here)."""
        return self.beta

    def forward(self, output: VAEOutput, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        reconstruction, kl, logs = self.core_terms(output, x)
        beta = self.beta_at(step)
        weighted_kl = beta * kl
        loss = reconstruction + weighted_kl
        logs.update(loss=loss, weighted_kl=weighted_kl, beta=torch.tensor(beta))
        return loss, logs
