"""Capacity-annealed β-VAE (Burgess et al. 2018, "Understanding disentangling in β-VAE", eq. 8):
minimise  E_q[-log p(x|z)] + γ · |KL(q(z|x) || N(0, I)) − C|,  C = min(C_max, C_max · step / ramp).

The target capacity C (nats) grows linearly from 0 to C_max over ``capacity_steps`` steps, so the
code is allowed to carry information gradually; a large γ (1000 in the paper) holds the KL near C.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from betavae.objectives.base import Objective

if TYPE_CHECKING:
    from betavae.models.vae import VAEOutput


class CapacityVAE(Objective):
    name = "capacity"
    weight_field, weight_symbol = "capacity_max", "C_max"
    regulariser_label = "γ·|KL−C|"

    def __init__(self, gamma: float = 1000.0, capacity_max: float = 25.0, capacity_steps: int = 100_000,
                 likelihood: str = "bernoulli", likelihood_scale: float = 0.1):
        super().__init__(likelihood, likelihood_scale)
        self.gamma = gamma
        self.capacity_max = capacity_max
        self.capacity_steps = capacity_steps

    @classmethod
    def from_config(cls, config, dataset_size: int) -> "CapacityVAE":
        return cls(config.capacity_gamma, config.capacity_max, config.capacity_steps, config.likelihood,
                   config.likelihood_scale)

    def weight_label(self) -> str:
        return f"γ = {self.gamma:g}, C 0 → {self.capacity_max:g} nats over {self.capacity_steps} steps"

    def kl_high_advice(self) -> str:
        return (f"the capacity schedule holds the KL near its target C, up to C_max = {self.capacity_max:g} nats: "
                "a C_max above log N leads it there (lower --capacity-max), and otherwise "
                f"γ = {self.gamma:g} may be too low to hold the KL to C")

    def capacity_at(self, step: int) -> float:
        """The target KL C (nats) at ``step``: min(C_max, C_max · step / capacity_steps)."""
        return min(self.capacity_max, self.capacity_max * step / self.capacity_steps)

    def regulariser(self, output: VAEOutput, kl: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        capacity = self.capacity_at(step)
        gap = kl - capacity
        return self.gamma * gap.abs(), {"capacity": capacity, "capacity_gap": gap}
