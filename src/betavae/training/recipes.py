"""Named training recipes: sets of config values found to work, chosen with ``--recipe NAME``.

A recipe fills in the config fields it names; any flag given explicitly wins over the recipe. The
recipe's name is kept in the run's ``config.json`` (field ``recipe``) beside the values it set, so
a run records both what it was asked for and what it ran with. From Python use
``betavae.recipe_config("fast-cpu", seed=1, out=...)``: ``TrainConfig(recipe=...)`` alone only
records the name.

The published recipes follow the training setups of the papers and of disentanglement_lib's
``unsupervised_study_v1`` (Locatello et al. 2019); see docs/recipes.md for the measurements behind
``fast-cpu``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from betavae.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    values: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "fast-cpu",
            "β-TCVAE (β = 10) on a half-width Burgess net, lr 1e-3 with cosine decay, batch 64, 8,000 steps: "
            "disentangles dSprites on a 2-core CPU in minutes (docs/recipes.md)",
            {"objective": "tc", "beta": 10.0, "width": 16, "lr": 1e-3, "lr_schedule": "cosine", "batch_size": 64,
             "steps": 8000, "time_limit": 30.0},
        ),
        Recipe(
            "factor-cpu",
            "FactorVAE (γ = 35) on a half-width Burgess net, decoder started at the data's mean image, lr 1e-3 with "
            "cosine decay, discriminator lr 1e-4, batch 64, 40,000 steps, at most 30 minutes: reconstructs shapes "
            "better than fast-cpu on a CPU (docs/recipes.md)",
            {"objective": "factor", "factor_gamma": 35.0, "width": 16, "decoder_init": "data", "lr": 1e-3,
             "lr_schedule": "cosine", "discriminator_lr": 1e-4, "batch_size": 64, "steps": 40000, "time_limit": 30.0},
        ),
        Recipe(
            "fast-beta",
            "β-VAE, β = 16, on a half-width Burgess net, decoder started at the data's mean image, β warmed up over "
            "500 steps, lr 3e-3 held to step 4,000, then cosine decay, batch 64, 5,000 steps: the demo's; "
            "turns x and y onto the axes within its 5,000 steps (docs/recipes.md)",
            {"objective": "beta", "beta": 16.0, "width": 16, "decoder_init": "data", "beta_schedule": "linear",
             "beta_warmup_steps": 500, "lr": 3e-3, "lr_schedule": "cosine", "lr_decay_fraction": 0.2,
             "batch_size": 64, "steps": 5000},
        ),
        Recipe(
            "broadcast-factor",
            "FactorVAE γ = 40 with disentanglement_lib's settings (lr 1e-4, discriminator lr 1e-4, batch 64) on its "
            "encoder and a spatial broadcast decoder, 300,000 steps: keeps x and y on the axes; MIG 0.41 within 30 "
            "minutes on a 2-core CPU, with rounder shapes than dlib-factor (docs/recipes.md)",
            {"arch": "broadcast", "objective": "factor", "factor_gamma": 40.0, "lr": 1e-4, "discriminator_lr": 1e-4,
             "batch_size": 64, "steps": 300000},
        ),
        Recipe(
            "beta4",
            "β-VAE, β = 4, Adam lr 1e-3, batch 64 (the common PyTorch setting with a faster start)",
            {"objective": "beta", "beta": 4.0, "lr": 1e-3, "batch_size": 64, "steps": 30000},
        ),
        Recipe(
            "default",
            "the config's defaults: β-VAE, β = 4, Adam lr 5e-4, batch 64, 20,000 steps",
            {},
        ),
        Recipe(
            "dlib-beta",
            "disentanglement_lib study: β-VAE β = 4 on its conv net, lr 1e-4, batch 64, 300,000 steps",
            {"arch": "locatello", "objective": "beta", "beta": 4.0, "lr": 1e-4, "batch_size": 64, "steps": 300000},
        ),
        Recipe(
            "dlib-tc",
            "disentanglement_lib study: β-TCVAE β = 6 (MWS estimator), lr 1e-4, batch 64, 300,000 steps",
            {"arch": "locatello", "objective": "tc", "beta": 6.0, "estimator": "mws", "lr": 1e-4, "batch_size": 64,
             "steps": 300000},
        ),
        Recipe(
            "dlib-factor",
            "disentanglement_lib study: FactorVAE γ = 40, lr 1e-4, discriminator lr 1e-4, batch 64, 300,000 steps",
            {"arch": "locatello", "objective": "factor", "factor_gamma": 40.0, "lr": 1e-4, "discriminator_lr": 1e-4,
             "batch_size": 64, "steps": 300000},
        ),
        Recipe(
            "burgess-capacity",
            "Burgess et al. 2018: capacity annealing C 0 → 25 nats over 100,000 steps, γ = 1000, lr 5e-4, 300,000 steps",
            {"objective": "capacity", "capacity_max": 25.0, "capacity_gamma": 1000.0, "capacity_steps": 100000,
             "lr": 5e-4, "batch_size": 64, "steps": 300000},
        ),
    )
}


def recipe_values(name: str) -> dict[str, Any]:
    """The config values recipe ``name`` sets (``recipe`` included)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)} (see 'betavae recipes').")
    return {**RECIPES[name].values, "recipe": name}


def format_recipes() -> str:
    width = max(map(len, RECIPES))
    return "\n".join(f"{r.name:<{width}}  {r.summary}" for r in RECIPES.values())
