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

**A memory of earlier posteriors** (``memory``, ``--tc-memory K``). With B images in a batch the
estimate of log q(z_i) can find no other image's posterior near z_i once q(z|x) is narrow: every other
term of the sum vanishes, log q(z_i) reads log q(z_i|x_i) − log N, the mutual-information estimate sits
at its ceiling log N whatever the model does, and, the three terms adding up to the KL, the
total-correlation term then penalises every nat of KL (measured in docs/recipes.md: at B = 64 on
dSprites, TC and dimension-wise KL estimates of −4.6 and −0.2 nats, both ≥ 0 in truth). The memory adds
the posteriors (mu, logvar) of the last K images of earlier batches, without gradient, to the images
the sum runs over (as a queue of earlier keys serves as extra negatives in MoCo, He et al. 2020), so the
sum covers M = B − 1 + K images other than x_i:

    mws: w[i, j] = 1 / (N (M + 1)) for every j
    mss: w[i, i] = 1/N for the sample's own image, w[i, j] = (N − 1) / (N M) for each of the M others

Each mss row sums to 1; the M others stand for a uniform draw from the other N − 1 images, so the
weighted sum is an unbiased estimate of q(z_i) (its log is still biased low, by less the larger M). The
memory's posteriors were computed with the encoder of up to K / B steps before, so they lag the
current model by that much; their gradient is not taken. Under torchrun every process keeps the
same memory, filled from the global batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from betavae.errors import CheckpointError, ConfigError
from betavae.objectives.base import Objective
from betavae.objectives.gaussian import log_normal_density

if TYPE_CHECKING:
    from betavae.models.vae import VAEOutput

ESTIMATORS = ("mws", "mss")
_LOG_2PI = math.log(2.0 * math.pi)


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


def memory_log_weights(batch_size: int, memory_size: int, dataset_size: int, estimator: str,
                       dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Log weights ``(B, B + K)`` of the estimate of q(z_i) over the batch and K earlier posteriors.

    Columns: the batch's B images, then the memory's K. mws: 1 / (N (M + 1)) everywhere; mss: 1/N on
    the sample's own image and (N − 1) / (N M) on each of the M = B − 1 + K others.
    """
    batch_block, log_w_memory = _memory_weight_parts(batch_size, memory_size, dataset_size, estimator, dtype, device)
    return torch.cat([batch_block, batch_block.new_full((batch_size, memory_size), log_w_memory)], dim=1)


def _memory_weight_parts(batch_size: int, memory_size: int, dataset_size: int, estimator: str, dtype: torch.dtype,
                         device: torch.device | str | None) -> tuple[torch.Tensor, float]:
    """:func:`memory_log_weights` as its batch block ``(B, B)`` and the one log weight of every memory column
    (what the estimate uses: no ``(B, B + K)`` matrix is built on a training step)."""
    n, others = dataset_size, batch_size - 1 + memory_size
    if estimator == "mws":
        log_w = -math.log(n * (others + 1))
        return torch.full((batch_size, batch_size), log_w, dtype=dtype, device=device), log_w
    if others < 1:
        raise ConfigError("minibatch stratified sampling needs at least one image besides the sample's own.")
    log_w = math.log((n - 1) / (n * others))
    weights = torch.full((batch_size, batch_size), log_w, dtype=torch.float64)
    weights.fill_diagonal_(-math.log(n))
    return weights.to(dtype=dtype, device=device), log_w


class _MemoryLogSumExp(torch.autograd.Function):
    """``logsumexp_k Σ_d L[i, k, d]`` and ``logsumexp_k L[i, k, d]`` for ``L[i, k, d] = log q(z_id | x_k)``.

    Over the K remembered posteriors, differentiable in ``z`` only (the memory is a constant). One
    ``(D, B, K)`` tensor is built and reused in place for both sums and the backward pass: K is in the
    thousands, where autograd's chain of elementwise ops would cost several times the training step.
    """

    @staticmethod
    def forward(ctx, z, mean, precision, constant):  # z (B, D); mean, precision, constant (D, K)
        diff = z.t().unsqueeze(2) - mean.unsqueeze(1)  # (D, B, K)
        log_q = diff.square().mul_(precision.unsqueeze(1)).mul_(-0.5).add_(constant.unsqueeze(1))
        joint_logits = log_q.sum(0)  # (B, K)
        joint_max = joint_logits.amax(1, keepdim=True)
        joint_soft = joint_logits.sub_(joint_max).exp_()
        joint_sum = joint_soft.sum(1, keepdim=True)
        joint_soft.div_(joint_sum)
        marginal_max = log_q.amax(2, keepdim=True)  # (D, B, 1)
        marginal_soft = log_q.sub_(marginal_max).exp_()
        marginal_sum = marginal_soft.sum(2, keepdim=True)
        marginal_soft.div_(marginal_sum)
        ctx.save_for_backward(diff, joint_soft, marginal_soft, precision)
        joint = (joint_sum.log_() + joint_max).squeeze(1)  # (B,)
        marginals = (marginal_sum.log_() + marginal_max).squeeze(2).t()  # (B, D)
        return joint, marginals

    @staticmethod
    def backward(ctx, grad_joint, grad_marginals):
        diff, joint_soft, marginal_soft, precision = ctx.saved_tensors
        slope = diff.mul_(precision.unsqueeze(1)).neg_()  # d L[i, k, d] / d z_id, (D, B, K)
        grad = torch.zeros_like(grad_marginals)
        if grad_joint is not None:
            grad = grad + (slope * joint_soft.unsqueeze(0)).sum(2).t() * grad_joint.unsqueeze(1)
        if grad_marginals is not None:
            grad = grad + slope.mul_(marginal_soft).sum(2).t() * grad_marginals
        return grad, None, None, None


def _memory_log_densities(z: torch.Tensor, memory_mu: torch.Tensor,
                          memory_logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted log-sums over the memory: joint ``(B,)`` and per dimension ``(B, D)`` (see the class above)."""
    memory_logvar = memory_logvar.float()
    mean = memory_mu.float().t().contiguous()
    precision = torch.exp(-memory_logvar).t().contiguous()
    constant = (-0.5 * (_LOG_2PI + memory_logvar)).t().contiguous()
    joint, marginals = _MemoryLogSumExp.apply(z.float(), mean, precision, constant)
    return joint.to(z.dtype), marginals.to(z.dtype)


def tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int,
                     estimator: str = "mws", memory_mu: torch.Tensor | None = None,
                     memory_logvar: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch estimates (nats) of mutual information, total correlation and dimension-wise KL.

    ``z``, ``mu``, ``logvar``: ``(B, D)``; ``z[i]`` is a sample of q(z|x_i). Chen et al. 2018, eq. 2.
    ``memory_mu``, ``memory_logvar``: ``(K, D)`` posteriors of K earlier images, added to the batch's
    in the estimate of q(z) (module docstring); None or K = 0: the batch alone, the paper's estimator.
    """
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown estimator '{estimator}'; choose one of: {', '.join(ESTIMATORS)}.")
    batch = z.shape[0]
    memory = 0 if memory_mu is None else memory_mu.shape[0]
    log_q_pairs = pairwise_log_density(z, mu, logvar)  # (B, B, D)
    if memory:
        log_w, log_w_memory = _memory_weight_parts(batch, memory, dataset_size, estimator, z.dtype, z.device)
        memory_joint, memory_marginals = _memory_log_densities(z, memory_mu, memory_logvar)  # (B,), (B, D)
        log_qz = torch.logaddexp(torch.logsumexp(log_q_pairs.sum(2) + log_w, dim=1), memory_joint + log_w_memory)
        log_qz_product = torch.logaddexp(torch.logsumexp(log_q_pairs + log_w.unsqueeze(2), dim=1),
                                         memory_marginals + log_w_memory).sum(1)
    else:
        if estimator == "mws":
            log_w = torch.full((batch, batch), -math.log(dataset_size * batch), dtype=z.dtype, device=z.device)
        else:
            log_w = mss_log_weights(batch, dataset_size, z.dtype, z.device)
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
                 estimator: str = "mws", likelihood: str = "bernoulli", likelihood_scale: float = 0.1,
                 memory: int = 0, latents: int | None = None):
        super().__init__(likelihood, likelihood_scale)
        if estimator not in ESTIMATORS:
            raise ConfigError(f"unknown estimator '{estimator}'; choose one of: {', '.join(ESTIMATORS)}.")
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 0:
            raise ConfigError(f"tc_memory must be a whole number >= 0, got {memory!r}.")
        if memory and not latents:
            raise ConfigError("a memory of earlier posteriors (tc_memory) needs the number of latent dimensions.")
        self.dataset_size = dataset_size
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.estimator = estimator
        self.memory = memory
        # rows written so far (≤ K) and the row written next: host integers, so no step waits on the device
        self.memory_filled = self.memory_next = 0
        if memory:  # buffers: saved in checkpoints (the two counters with the auxiliary state)
            self.register_buffer("memory_mu", torch.zeros(memory, latents))
            self.register_buffer("memory_logvar", torch.zeros(memory, latents))

    @classmethod
    def from_config(cls, config, dataset_size: int) -> "BetaTCVAE":
        return cls(dataset_size, config.tc_alpha, config.beta, config.tc_gamma, config.estimator, config.likelihood,
                   config.likelihood_scale, config.tc_memory, config.latents)

    def weight_label(self) -> str:
        memory = f", memory of {self.memory:,}" if self.memory else ""
        return f"α = {self.alpha:g}, β = {self.beta:g}, γ = {self.gamma:g} ({self.estimator}{memory})"

    def kl_high_advice(self) -> str:
        return (f"β = {self.beta:g} presses only the total correlation part of the KL; the mutual information and "
                f"the dimension-wise KL, weighed by α = {self.alpha:g} and γ = {self.gamma:g}, make the rest, so a "
                "larger α or γ lowers such a KL more than a larger β")

    def regulariser(self, output: VAEOutput, kl: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        memory_mu = memory_logvar = None
        if self.memory_filled:
            memory_mu = self.memory_mu[:self.memory_filled]
            memory_logvar = self.memory_logvar[:self.memory_filled]
        mi, tc, dwkl = tc_decomposition(output.z, output.mu, output.logvar, self.dataset_size, self.estimator,
                                        memory_mu, memory_logvar)
        logs = {"mutual_information": mi, "total_correlation": tc, "dimension_wise_kl": dwkl}
        return self.alpha * mi + self.beta * tc + self.gamma * dwkl, logs

    def update_auxiliary(self, output: VAEOutput, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """After the step: the batch's posteriors replace the memory's oldest (nothing without a memory)."""
        if self.memory:
            self.remember(_global_rows(output.mu.detach()), _global_rows(output.logvar.detach()))
        return {}

    @torch.no_grad()
    def remember(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Write posteriors ``(n, D)`` over the memory's oldest rows (a ring of K rows)."""
        mu, logvar = mu[-self.memory:].float(), logvar[-self.memory:].float()
        rows = (self.memory_next + torch.arange(mu.shape[0], device=self.memory_mu.device)) % self.memory
        self.memory_mu[rows] = mu.to(self.memory_mu.device)
        self.memory_logvar[rows] = logvar.to(self.memory_logvar.device)
        self.memory_next = (self.memory_next + mu.shape[0]) % self.memory
        self.memory_filled = min(self.memory, self.memory_filled + mu.shape[0])

    def auxiliary_state(self) -> dict[str, Any]:
        return {"memory_filled": self.memory_filled, "memory_next": self.memory_next} if self.memory else {}

    def load_auxiliary_state(self, state: dict[str, Any] | None) -> None:
        if not self.memory:
            return
        state = state or {}
        filled, next_row = state.get("memory_filled"), state.get("memory_next")
        for name, value in (("memory_filled", filled), ("memory_next", next_row)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= self.memory:
                raise CheckpointError(f"the checkpoint's β-TCVAE memory has no valid {name} ({value!r}) for a memory "
                                      f"of {self.memory}; it was not written by a run with --tc-memory {self.memory}.")
        self.memory_filled, self.memory_next = filled, next_row % self.memory


def _global_rows(local: torch.Tensor) -> torch.Tensor:
    """This process's rows under torchrun gathered into the global batch's (every process has equal rows)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    world = torch.distributed.get_world_size()
    gathered = torch.empty((world * local.shape[0], *local.shape[1:]), dtype=local.dtype, device=local.device)
    torch.distributed.all_gather_into_tensor(gathered, local.contiguous())
    return gathered
