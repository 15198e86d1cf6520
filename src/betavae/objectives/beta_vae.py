"""β-VAE (Higgins et al. 2017, "β-VAE: Learning basic visual concepts with a constrained
variational framework", eq. 4): minimise  E_q[-log p(x|z)] + β · KL(q(z|x) || N(0, I)).

β = 1 is the plain VAE (Kingma & Welling 2014); β > 1 presses q(z|x) toward the factorised prior.
β may follow a schedule (:mod:`betavae.objectives.schedules`): a linear warm-up, or the cyclical
annealing of Fu et al. 2019; the β in force is logged as ``beta``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from betavae.objectives.base import Objective
from betavae.objectives.schedules import Schedule

if TYPE_CHECKING:
    from betavae.models.vae import VAEOutput


class BetaVAE(Objective):
    name = "beta"
    weight_field, weight_symbol = "beta", "β"
    regulariser_label = "β·KL"

    def __init__(self, beta: float = 4.0, schedule: Schedule | None = None, likelihood: str = "bernoulli",
                 likelihood_scale: float = 0.1):
        super().__init__(likelihood, likelihood_scale)
        self.beta = beta
        self.schedule = schedule or Schedule()

    @staticmethod
    def schedule_from_config(config) -> Schedule:
        """The β schedule that ``config`` asks for, laid over its ``steps``."""
        return Schedule(config.beta_schedule, config.beta_warmup_steps, config.steps, config.beta_cycles,
                        config.beta_cycle_ratio)

    @classmethod
    def from_config(cls, config, dataset_size: int) -> "BetaVAE":
        return cls(config.beta, cls.schedule_from_config(config), config.likelihood, config.likelihood_scale)

    def weight_label(self) -> str:
        described = self.schedule.describe()
        return f"β = {self.beta:g}" + (f" ({described})" if described else "")

    def beta_at(self, step: int) -> float:
        """The KL weight in force at ``step``: the target β times the schedule's fraction."""
        return self.beta * self.schedule(step)

    def regulariser(self, output: VAEOutput, kl: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        beta = self.beta_at(step)
        return beta * kl, {"beta": beta}
