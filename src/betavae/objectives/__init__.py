"""Objectives: the β-VAE family, each a callable ``objective(output, x, step) -> (loss, logs)``."""

from __future__ import annotations

from betavae.errors import ConfigError
from betavae.objectives.base import Objective
from betavae.objectives.beta_vae import BetaVAE
from betavae.objectives.capacity import CapacityVAE
from betavae.objectives.dip_vae import DIPVAEI, DIPVAEII
from betavae.objectives.factor_vae import FactorVAE
from betavae.objectives.gaussian import kl_to_standard_normal, log_normal_density, reparameterize
from betavae.objectives.likelihoods import LIKELIHOODS, decoded_mean, reconstruction_nll
from betavae.objectives.schedules import SCHEDULES
from betavae.objectives.tc_vae import ESTIMATORS, BetaTCVAE

#: name -> objective class (each has ``from_config(config, dataset_size)``).
OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (BetaVAE, CapacityVAE, FactorVAE, BetaTCVAE, DIPVAEI, DIPVAEII)
}


def build_objective(config, dataset_size: int) -> Objective:
    """The objective named by ``config.objective``, configured from ``config``."""
    if config.objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{config.objective}'; choose one of: {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[config.objective].from_config(config, dataset_size)


__all__ = [
    "ESTIMATORS",
    "LIKELIHOODS",
    "OBJECTIVES",
    "SCHEDULES",
    "BetaTCVAE",
    "BetaVAE",
    "CapacityVAE",
    "DIPVAEI",
    "DIPVAEII",
    "FactorVAE",
    "Objective",
    "build_objective",
    "decoded_mean",
    "kl_to_standard_normal",
    "log_normal_density",
    "reconstruction_nll",
    "reparameterize",
]
