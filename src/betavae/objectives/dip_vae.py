"""DIP-VAE (Kumar et al. 2018, "Variational inference of disentangled latent concepts from
unlabeled observations"): minimise

    E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)) + λ_od Σ_{i≠j} Cov_ij² + λ_d Σ_i (Cov_ii − 1)²,

pressing a covariance of the codes toward the identity, as the factorised prior's is:
- DIP-VAE-I  (eq. 6): Cov = Cov_p(x)[μ(x)], the covariance of the encoder means over the batch;
- DIP-VAE-II (eq. 7): Cov = Cov_q(z)[z] = E_p(x)[diag σ²(x)] + Cov_p(x)[μ(x)], the covariance of
  the aggregate posterior (law of total covariance).
Batch covariances are the biased (divide by B) estimates, as in disentanglement_lib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from betavae.objectives.base import Objective

if TYPE_CHECKING:
    from betavae.models.vae import VAEOutput


def batch_covariance(x: torch.Tensor) -> torch.Tensor:
    """Covariance ``(D, D)`` of the rows of ``x`` ``(B, D)``: E[x xᵀ] − E[x] E[x]ᵀ (divide by B)."""
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / x.shape[0]


def covariance_deviation(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How far ``covariance`` ``(D, D)`` is from the identity: (Σ_{i≠j} Cov_ij², Σ_i (Cov_ii − 1)²).

    The DIP penalty is ``λ_od * off_diagonal + λ_d * diagonal`` (Kumar et al. 2018, eqs. 6–7).
    """
    diagonal = torch.diagonal(covariance)
    off_diagonal = covariance.square().sum() - diagonal.square().sum()
    return off_diagonal, (diagonal - 1.0).square().sum()


class DIPVAE(Objective):
    """The DIP-VAE penalty on :meth:`covariance`; the types are :class:`DIPVAEI` and :class:`DIPVAEII`."""

    regulariser_label = "KL+DIP"
    weight_field, weight_symbol = "dip_lambda_od", "λ_od"
    min_batch_size = 2
    #: λ_d as a multiple of λ_od when not given (disentanglement_lib: 10 for type I, 1 for type II).
    default_diagonal_factor = 10.0

    def __init__(self, lambda_od: float = 10.0, lambda_d: float | None = None, likelihood: str = "bernoulli",
                 likelihood_scale: float = 0.1):
        super().__init__(likelihood, likelihood_scale)
        self.lambda_od = lambda_od
        self.lambda_d = self.default_diagonal_factor * lambda_od if lambda_d is None else lambda_d

    @classmethod
    def from_config(cls, config, dataset_size: int) -> "DIPVAE":
        return cls(config.dip_lambda_od, config.dip_lambda_d, config.likelihood, config.likelihood_scale)

    def weight_label(self) -> str:
        return f"λ_od = {self.lambda_od:g}, λ_d = {self.lambda_d:g}"

    def kl_high_advice(self) -> str:
        return (f"DIP-VAE weighs the KL by 1, as a plain VAE does ({self.weight_label()} press the covariance of "
                "the codes only), so it is usual for its KL to stay there; it says the codes are more precise "
                "than telling the images apart needs, not that λ is too low")

    def covariance(self, output: VAEOutput) -> torch.Tensor:
        """The covariance this type presses toward the identity, ``(D, D)``."""
        raise NotImplementedError

    def regulariser(self, output: VAEOutput, kl: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        off_diagonal, diagonal = covariance_deviation(self.covariance(output))
        penalty = self.lambda_od * off_diagonal + self.lambda_d * diagonal
        logs = {"dip_penalty": penalty, "covariance_off_diagonal": off_diagonal, "covariance_diagonal": diagonal}
        return kl + penalty, logs


class DIPVAEI(DIPVAE):
    """DIP-VAE-I: the covariance of the encoder means (Kumar et al. 2018, eq. 6)."""

    name = "dip1"
    default_diagonal_factor = 10.0

    def covariance(self, output: VAEOutput) -> torch.Tensor:
        return batch_covariance(output.mu)


class DIPVAEII(DIPVAE):
    """DIP-VAE-II: the covariance of z under q(z), E[diag σ²] + Cov[μ] (Kumar et al. 2018, eq. 7)."""

    name = "dip2"
    default_diagonal_factor = 1.0

    def covariance(self, output: VAEOutput) -> torch.Tensor:
        return batch_covariance(output.mu) + torch.diag(output.logvar.exp().mean(0))
