"""β-TCVAE (Chen et al. 2018, "Isolating sources of disentanglement in variational autoencoders").

The KL term, averaged over the data, splits into three (eq. 2):

    E_p(n) KL(q(z|n) || p(z)) = I_q(z; n)                       mutual information
                               + KL(q(z) || Π_d q(z_d))         total correlation
                               + Σ_d KL(q(z_d) || p(z_d))        dimension-wise KL

and β-TCVAE minimises  E_q[-log p(x|z)] + α · MI + β · TC + γ · dimension-wise KL  (the objective
numbered Eq. 5 in the version disentanglement_lib cites; α = γ = 1 in the paper's experiments).

The aggregate posterior q(z) = (1/N) Σ_n q(z|n) over the N training images is estimated on the
batch from the (B, B, D) matrix  L[i, j, d] = log q(z_id | x_j),  z_i a sample of q(z|x_i):

    log q(z_i)        ≈ logsumexp_j (Σ_d L[i, j, d] + log w[i, j])
    log Π_d q(z_id)   ≈ Σ_d logsumexp_j (L[i, j, d] + log w[i, j])

``mws``  minibatch weighted sampling (§4.1, appendix C.1): w[i, j] = 1 / (N B) everywhere. It is a
         lower bound on log q; the three terms can carry offsets of order log N, but the offsets do
         not depend on the parameters, so the gradients are those of the true decomposition.
``mss``  minibatch stratified sampling (appendix C.2), with M = B − 1: w[i, i] = 1/N for the sample's
         own image, w = (N − M)/(N M) for one other image of the batch (here j = i + 1 mod B) and
         1/M for the remaining M − 1; each row sums to 1, so q(z) = p(z) gives MI = TC = 0 exactly.
         (The official code's matrix strides by B instead of B + 1 and so puts 1/N in column 0
         rather than on the diagonal; rtqichen/beta-tcvae pull request #1 reports it.)

With either weighting, MI + TC + dimension-wise KL = mean_i [log q(z_i|x_i) − log p(z_i)], the
sampled estimate of the KL term, to float precision.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from betavae.errors import ConfigError
from betavae.objectives.base import Objective
from betavae.objectives.gaussian import log_normal_density

if TYPE_CHECKING:
    from betavae.models.vae import VAEOutput

ESTIMATORS = ("mws", "mss")


def pairwise_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``L[i, j, d] = log N(z[i, d]; mu[j, d], exp(logvar[j, d]))``: ``(B, B, D)`` from ``(B, D)`` inputs."""
    return log_normal_density(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))


def mss_log_weights(batch_size: int, dataset_size: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Log importance weights ``(B, B)`` of minibatch stratified sampling (Chen et al. 2018, app. C.2).

    Row i: 1/N at j = i, (N − M)/(N M) at j = i + 1 (mod B), 1/M elsewhere, with M = B − 1.
    """
    if batch_size < 2:
        raise ConfigError(f"minibatch stratified sampling needs a batch of at least 2, got {batch_size}.")
    n, m = dataset_size, batch_size - 1
    weights = torch.full((batch_size, batch_size), 1.0 / m, dtype=torch.float64)
    rows = torch.arange(batch_size)
    weights[rows, (rows + 1) % batch_size] = (n - m) / (n * m)
    weights[rows, rows] = 1.0 / n
    return weights.log().to(dtype=dtype, device=device)


def tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int,
                     estimator: str = "mws") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch estimates (nats) of mutual information, total correlation and dimension-wise KL.

    ``z``, ``mu``, ``logvar``: ``(B, D)``; ``z[i]`` is a sample of q(z|x_i). Chen et al. 2018, eq. 2.
    """
    batch = z.shape[0]
    log_q_pairs = pairwise_log_density(z, mu, logvar)  # (B, B, D)
    if estimator == "mws":
        log_w = torch.full((batch, batch), -math.log(dataset_size * batch), dtype=z.dtype, device=z.device)
    elif estimator == "mss":
        log_w = mss_log_weights(batch, dataset_size, z.dtype, z.device)
    else:
        raise ConfigError(f"unknown estimator '{estimator}'; choose one of: {', '.join(ESTIMATORS)}.")
    log_qz = torch.logsumexp(log_q_pairs.sum(2) + log_w, dim=1)  # (B,)
    log_qz_product = torch.logsumexp(log_q_pairs + log_w.unsqueeze(2), dim=1).sum(1)  # (B,)
    log_qz_given_x = log_normal_density(z, mu, logvar).sum(1)  # (B,)
    log_pz = log_normal_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)  # (B,)
    mutual_information = (log_qz_given_x - log_qz).mean()
    total_correlation = (log_qz - log_qz_product).mean()
    dimension_wise_kl = (log_qz_product - log_pz).mean()
    return mutual_information, total_correlation, dimension_wise_kl


class BetaTCVAE(Objective):
    name = "tc"
    weight_field, weight_symbol = "beta", "β"
    regulariser_label = "αMI+βTC+γKLd"
    min_batch_size = 2

    def __init__(self, dataset_size: int, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
                 estimator: str = "mws", likelihood: str = "bernoulli", likelihood_scale: float = 0.1):
        super().__init__(likelihood, likelihood_scale)
        if estimator not in ESTIMATORS:
            raise ConfigError(f"unknown estimator '{estimator}'; choose one of: {', '.join(ESTIMATORS)}.")
        self.dataset_size = dataset_size
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.estimator = estimator

    @classmethod
    def from_config(cls, config, dataset_size: int) -> "BetaTCVAE":
        return cls(dataset_size, config.tc_alpha, config.beta, config.tc_gamma, config.estimator, config.likelihood,
                   config.likelihood_scale)

    def weight_label(self) -> str:
        return f"α = {self.alpha:g}, β = {self.beta:g}, γ = {self.gamma:g} ({self.estimator})"

    def regulariser(self, output: VAEOutput, kl: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        mi, tc, dwkl = tc_decomposition(output.z, output.mu, output.logvar, self.dataset_size, self.estimator)
        logs = {"mutual_information": mi, "total_correlation": tc, "dimension_wise_kl": dwkl}
        return self.alpha * mi + self.beta * tc + self.gamma * dwkl, logs
