"""What every objective is: ``objective(output, x, step) -> (loss, logs)``.

Objectives differ only in the regulariser they add to the reconstruction NLL (:meth:`Objective.regulariser`);
:meth:`Objective.forward` adds it and logs the terms every objective shares. An objective that
needs its own network and optimizer (FactorVAE's discriminator) owns them: the training loop calls
:meth:`Objective.update_auxiliary` after each VAE step and never branches on an objective's name.
Logs are tensors or Python floats (no device sync); the loop reads them only on logging steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from betavae.objectives.gaussian import kl_to_standard_normal
from betavae.objectives.likelihoods import reconstruction_nll

if TYPE_CHECKING:
    from betavae.models.vae import VAEOutput


class Objective(nn.Module):
    """Base class: a loss on a :class:`VAEOutput`, plus optional auxiliary training."""

    name: str = "objective"
    #: The ``TrainConfig`` field holding the main regularisation weight, the one a sweep varies
    #: (None: the objective has none a sweep knows how to vary).
    weight_field: str | None = None
    #: How that weight is written in messages and plots.
    weight_symbol: str = ""
    #: How logs, progress lines and figures name ``weighted_regulariser`` (the regulariser added to the NLL).
    regulariser_label: str = "regulariser"
    #: the smallest batch the regulariser is defined on (batch statistics need at least 2 codes)
    min_batch_size: int = 1
    #: whether torchrun's processes can train it as one process would (False: it trains a network of
    #: its own after each step, which DistributedDataParallel would not keep the same across processes)
    data_parallel: bool = True
    #: the autocast dtype the training loop runs the model in (None: float32); it sets this before the
    #: first step, and an objective with a network of its own runs that network's passes in it too
    autocast_dtype: torch.dtype | None = None

    def __init__(self, likelihood: str = "bernoulli", likelihood_scale: float = 0.1):
        super().__init__()
        self.likelihood = likelihood
        self.likelihood_scale = likelihood_scale

    def core_terms(self, output: VAEOutput, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction NLL and KL (batch means, nats) and the log keys every objective shares."""
        reconstruction = reconstruction_nll(output.recon, x, self.likelihood, self.likelihood_scale).mean()
        kl_per_dim = kl_to_standard_normal(output.mu, output.logvar).mean(0)  # (z,)
        kl = kl_per_dim.sum()
        logs = {
            "reconstruction": reconstruction,
            "kl": kl,
            "kl_per_dim": kl_per_dim,
            "elbo": -(reconstruction + kl),
        }
        return reconstruction, kl, logs

    def regulariser(self, output: VAEOutput, kl: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The term added to the reconstruction NLL at ``step``, and the objective's own log entries.

        ``kl`` is the analytic KL(q(z|x) || N(0, I)), summed over dimensions, mean over the batch.
        """
        raise NotImplementedError

    def forward(self, output: VAEOutput, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """``loss = reconstruction + regulariser``; logs the core terms, ``loss`` and ``weighted_regulariser``.

        ``weighted_regulariser`` is the whole regulariser (``loss - reconstruction``), whatever its form.
        """
        reconstruction, kl, logs = self.core_terms(output, x)
        regulariser, own_logs = self.regulariser(output, kl, step)
        loss = reconstruction + regulariser
        logs.update(own_logs)
        logs.update(loss=loss, weighted_regulariser=regulariser)
        return loss, logs

    def weight_label(self) -> str:
        """The objective's main regularisation weight in words (e.g. "β = 4"), for messages."""
        return ""

    def kl_high_advice(self) -> str:
        """What a KL above log N says of this objective's settings, for the diagnosis (a clause, no full stop).

        The default names :meth:`weight_label` as too low; objectives whose weight does not press the whole KL
        (FactorVAE, β-TCVAE, DIP-VAE, the capacity schedule) say what does.
        """
        return f"{self.weight_label()} may be too low to press the latents toward independent factors"

    def update_auxiliary(self, output: VAEOutput, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """Train the objective's own networks after the VAE step; returns extra logs."""
        return {}

    def auxiliary_state(self) -> dict[str, Any]:
        """State outside ``state_dict()`` to checkpoint (e.g. an optimizer's); JSON and tensors."""
        return {}

    def load_auxiliary_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`auxiliary_state` returned."""
