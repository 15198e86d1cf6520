"""Schedules for the KL weight β: the fraction of the target β in force at a training step.

``constant``  1 at every step.
``linear``    warm-up: min(1, step / warmup_steps), so β grows from 0 to its target, then stays
              (the monotonic schedule of Bowman et al. 2016, as compared in Fu et al. 2019).
``cyclical``  Fu et al. 2019, "Cyclical annealing schedule: a simple approach to mitigating KL
              vanishing", §3: training is split into M cycles; within each, β rises linearly from 0
              to its target over the first fraction R of the cycle and stays there for the rest:
              τ = mod(t, ⌈T/M⌉) / (T/M),  fraction = τ / R if τ ≤ R else 1,
              with t the 0-based step (the paper's t − 1) and T the run's total steps.

Steps count from 0, as in the training loop: the weight of the first update is the value at 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from betavae.errors import ConfigError

SCHEDULES = ("constant", "linear", "cyclical")


def linear_warmup(step: int, warmup_steps: int) -> float:
    """min(1, step / warmup_steps): 0 at step 0, 1 from ``warmup_steps`` on."""
    return min(1.0, step / warmup_steps)


def cyclical(step: int, total_steps: int, cycles: int, ratio: float) -> float:
    """Fu et al. 2019 (§3) with a linear ramp: τ = mod(step, ⌈T/M⌉) / (T/M); τ / R while τ ≤ R, else 1."""
    period = total_steps / cycles  # T / M, possibly fractional
    tau = (step % math.ceil(period)) / period
    return tau / ratio if tau <= ratio else 1.0


@dataclass(frozen=True)
class Schedule:
    """A named schedule with its settings; ``schedule(step)`` is the fraction of β in force."""

    kind: str = "constant"
    warmup_steps: int = 10_000
    total_steps: int = 1
    cycles: int = 4
    ratio: float = 0.5

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "linear":
            return linear_warmup(step, self.warmup_steps)
        if self.kind == "cyclical":
            return cyclical(step, self.total_steps, self.cycles, self.ratio)
        raise ConfigError(f"unknown β schedule '{self.kind}'; choose one of: {', '.join(SCHEDULES)}.")

    def describe(self) -> str:
        """The schedule in words, for messages ("" for the constant one)."""
        if self.kind == "linear":
            return f"linear warm-up over {self.warmup_steps} steps"
        if self.kind == "cyclical":
            return f"cyclical, {self.cycles} cycles over {self.total_steps} steps, ramp {self.ratio:g} of each"
        return ""
