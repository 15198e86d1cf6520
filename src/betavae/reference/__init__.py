"""Reference models shipped with betavae: trained dSprites models to compare a fresh run against.

Each is an ordinary run directory, kept small: ``config.json``, ``model.safetensors``,
``metrics.jsonl`` (its training curves), ``diagnosis.json``, ``evaluation.json`` (the full metric
suite by ``betavae evaluate``), ``figures/traversals.png`` and a ``REFERENCE.json`` saying how it was
made. ``betavae reference`` lists them; ``betavae demo`` shows the demo's model beside one. They are
read-only: to evaluate or train one further, copy its folder first (``betavae reference --copy``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from betavae.checks import check_output_path
from betavae.errors import CheckpointError, ConfigError
from betavae.training import load as load_run
from betavae.training.rundir import EVALUATION_FILE
from betavae.training.rundir import REFERENCE_FILE as INFO_FILE
from betavae.training.rundir import REFERENCE_ROOT as ROOT
from betavae.training.rundir import refuse_writes

# What the demo shows beside its own model: the best shipped recipe.
DEMO_REFERENCE = "dsprites-fast-cpu"


def names() -> list[str]:
    """The shipped reference models, by name (their folders)."""
    return sorted(p.name for p in ROOT.iterdir() if (p / INFO_FILE).is_file())


def path(name: str) -> Path:
    """The folder of reference model ``name``."""
    if name not in names():
        known = ", ".join(names()) or "none (this installation ships no reference models)"
        raise ConfigError(f"unknown reference model '{name}'; shipped: {known}.")
    return ROOT / name


def info(name: str) -> dict[str, Any]:
    """``REFERENCE.json`` of ``name``: its recipe, training time, steps and how it was made."""
    return _read(path(name) / INFO_FILE)


def evaluation(name: str) -> dict[str, Any]:
    """The stored ``evaluation.json`` of ``name``."""
    return _read(path(name) / EVALUATION_FILE)


def load(name: str, device: str = "cpu"):
    """The trained model of ``name``, in eval mode."""
    return load_run(path(name), device)


def copy(name: str, destination: str | Path) -> Path:
    """Copy ``name`` to ``destination`` (which must not exist), for evaluating or training it further."""
    destination = check_output_path(destination, "the destination")
    if destination.exists():
        raise ConfigError(f"{destination} already exists; choose another destination (nothing was overwritten).")
    shutil.copytree(path(name), destination)
    return destination


def summary_values(record: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of an evaluation record: MIG, FactorVAE score, BetaVAE score, DCI, SAP."""
    metrics = record.get("metrics", {})
    picks = {"MIG": ("mig", "mig"), "FactorVAE score": ("factor_vae_score", "eval_accuracy"),
             "BetaVAE score": ("beta_vae_score", "eval_accuracy"), "DCI disentanglement": ("dci", "disentanglement"),
             "SAP": ("sap", "sap")}
    out = {}
    for label, (metric, measure) in picks.items():
        value = metrics.get(metric, {}).get("values", {}).get(measure)
        if value is not None:
            out[label] = float(value)
    return out


def format_references() -> str:
    """One block per shipped model: recipe, training, headline metrics."""
    lines = []
    for name in names():
        meta = info(name)
        values = summary_values(evaluation(name))
        lines.append(f"{name}: {meta.get('summary', '')}")
        lines.append(f"  trained {meta.get('steps', '?'):,} steps ({meta.get('train_minutes', 0):.0f} min on "
                     f"{meta.get('hardware', '?')}); " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
        lines.append(f"  {path(name)}")
    return "\n".join(lines) if lines else "no reference models are shipped with this installation"


def _read(file: Path) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file} cannot be read ({exc}); reinstall betavae to restore its reference models.") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{file} does not hold a JSON object; reinstall betavae to restore it.")
    return value
