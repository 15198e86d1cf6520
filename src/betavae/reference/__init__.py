"""Reference models shipped with betavae: trained dSprites models to compare a fresh run against.

Each is an ordinary run directory, kept small: ``config.json``, ``model.safetensors``,
``metrics.jsonl`` (its training curves), ``diagnosis.json``, ``evaluation.json`` (the full metric
suite by ``betavae evaluate``), ``figures/traversals.png`` and a ``REFERENCE.json`` saying how it was
made. ``betavae reference`` lists them; ``betavae demo`` shows the demo's model beside one. They are
read-only: to evaluate or train one further, copy its folder first (``betavae reference --copy``).

Shipped studies live in ``studies/<name>/``: the outputs of a finished ``betavae sweep``
(``summary.json``, ``tradeoff.png``, ``recommendation.json``) and a ``STUDY.json`` saying how it was
made (command, hardware, date, minutes). ``studies/dsprites-tradeoff/`` is the β trade-off on dSprites
that the README and every run report show. :func:`ship_study` copies a sweep's outputs there
(``benchmarks/tradeoff_study.py`` runs the sweep and ships it); until then :func:`study` returns None and
nothing shows it.
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import betavae
from betavae.checks import check_output_path
from betavae.errors import CheckpointError, ConfigError
from betavae.sweep.outputs import TRADEOFF_FIGURE
from betavae.training import load as load_run
from betavae.training.rundir import EVALUATION_FILE
from betavae.training.rundir import REFERENCE_FILE as INFO_FILE
from betavae.training.rundir import REFERENCE_ROOT as ROOT
from betavae.training.rundir import refuse_writes

# What the demo shows beside its own model: the best model trained on a CPU, which disentangles x, y and scale
# and draws more of the shapes than the demo's few minutes can.
DEMO_REFERENCE = "dsprites-broadcast-factor"

#: The shipped studies' folder; read when a study is looked up, so a test may point it elsewhere.
STUDIES_ROOT = ROOT / "studies"
#: A shipped study's record (how it was made), and the sweep outputs it ships beside it.
STUDY_FILE = "STUDY.json"
SUMMARY_FILE, RECOMMENDATION_FILE = "summary.json", "recommendation.json"
#: The β trade-off on dSprites that the README and the run reports show.
TRADEOFF_STUDY = "dsprites-tradeoff"


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


@dataclass(frozen=True)
class Study:
    """A shipped sweep study: its folder and the JSON files in it."""

    name: str
    path: Path
    info: dict[str, Any]  # STUDY.json: command, hardware, date, minutes, ...
    summary: dict[str, Any]  # the sweep's summary.json: trials and per-weight spreads
    recommendation: dict[str, Any]  # the sweep's recommendation.json

    @property
    def figure(self) -> Path | None:
        """The sweep's ``tradeoff.png``, when shipped."""
        figure = self.path / TRADEOFF_FIGURE
        return figure if figure.is_file() else None

    @property
    def per_weight(self) -> list[dict[str, Any]]:
        """One row per weight (ascending) with each measure's spread over seeds (``betavae.sweep.aggregate``)."""
        return list(self.summary.get("per_weight", []))

    @property
    def recommended(self) -> float | None:
        """The weight the sweep recommended (None when it recommended none)."""
        weight = self.recommendation.get("weight")
        return float(weight) if isinstance(weight, (int, float)) else None

    @property
    def weight_name(self) -> str:
        """The swept weight's symbol, β for a β-VAE."""
        return str(self.recommendation.get("weight_name") or "β")


#: The columns a study's table shows beside the weight and its seeds: label, and the per-weight key. "shape
#: shown" is the share of reconstructions that show the image's shape (``reconstructed_factors``,
#: docs/metrics.md), in %.
STUDY_COLUMNS = (("reconstruction NLL (nats)", "reconstruction"), ("MIG", "mig.mig"),
                 ("FactorVAE score", "factor_vae_score.eval_accuracy"), ("shape shown (%)", "reconstructed_factors.shape"))


def study_value(key: str, value: float) -> str:
    """A value of a study column as its table shows it: reconstruction to 0.1 nat, a share of
    reconstructions in whole per cent, a score to 3 decimals."""
    if key == "reconstruction":
        return f"{value:.1f}"
    if key.startswith("reconstructed_factors."):
        return f"{100 * value:.0f}"
    return f"{value:.3f}"


def study_table(found: Study) -> tuple[list[str], list[list[str]], int | None]:
    """The study's per-weight table as text: the header (weight symbol, seeds, :data:`STUDY_COLUMNS`), one
    row per weight with each column's mean ± std over seeds ("–" where not measured), and the position
    of the recommended weight's row (None when there is none)."""
    header = [found.weight_name, "seeds"] + [label for label, _ in STUDY_COLUMNS]
    rows, chosen = [], None
    for i, row in enumerate(found.per_weight):
        done, total = row.get("completed", 0), len(row.get("seeds", []))
        cells = [f"{row['weight']:g}", f"{done}" if done == total else f"{done} of {total}"]
        for _, key in STUDY_COLUMNS:
            spread = row.get(key) if key == "reconstruction" else row.get("metrics", {}).get(key)
            if isinstance(spread, dict) and spread.get("n") and isinstance(spread.get("mean"), (int, float)):
                cells.append(f"{study_value(key, spread['mean'])} ± {study_value(key, spread.get('std') or 0.0)}")
            else:
                cells.append("–")
        rows.append(cells)
        if found.recommended is not None and float(row["weight"]) == found.recommended:
            chosen = i
    return header, rows, chosen


def studies() -> list[str]:
    """The shipped studies, by name (their folders under :data:`STUDIES_ROOT`)."""
    if not STUDIES_ROOT.is_dir():
        return []
    return sorted(p.name for p in STUDIES_ROOT.iterdir() if (p / STUDY_FILE).is_file())


def study(name: str = TRADEOFF_STUDY) -> Study | None:
    """Shipped study ``name``, or None when this installation does not ship it.

    A study whose files are damaged raises :class:`CheckpointError` naming the file.
    """
    folder = STUDIES_ROOT / name
    if not (folder / STUDY_FILE).is_file():
        return None
    return Study(name, folder, _read(folder / STUDY_FILE), _read(folder / SUMMARY_FILE),
                 _read(folder / RECOMMENDATION_FILE))


def ship_study(sweep_dir: str | Path, name: str = TRADEOFF_STUDY, *, command: str, hardware: str, minutes: float,
               date: str | None = None, root: str | Path | None = None, overwrite: bool = False,
               **notes: Any) -> Path:
    """Copy a finished sweep's ``summary.json``, ``recommendation.json`` and ``tradeoff.png`` to the
    study folder ``root/name`` (``root`` defaults to :data:`STUDIES_ROOT`) and write its ``STUDY.json``.

    ``command`` is the sweep command that made it, ``hardware`` what it ran on, ``minutes`` its wall
    time; ``date`` defaults to today (UTC); ``notes`` are further JSON values kept in ``STUDY.json``.
    Trial run directories inside the sweep are recorded relative to it, so no machine's paths ship.
    Refuses a sweep with unfinished trials, and an existing study unless ``overwrite``.
    """
    sweep_dir = Path(sweep_dir)
    missing = [f for f in (SUMMARY_FILE, RECOMMENDATION_FILE, TRADEOFF_FIGURE) if not (sweep_dir / f).is_file()]
    if missing:
        raise ConfigError(f"{sweep_dir} holds no {', '.join(missing)}: it is not a finished sweep. Run (or rerun) "
                          "its 'betavae sweep' command until it ends, then ship it.")
    summary, recommendation = _read(sweep_dir / SUMMARY_FILE), _read(sweep_dir / RECOMMENDATION_FILE)
    trials = summary.get("trials", [])
    unfinished = [t.get("name", f"{t.get('weight')}/{t.get('seed')}") for t in trials if t.get("state") == "MISSING"]
    if not trials or unfinished:
        raise ConfigError(f"the sweep in {sweep_dir} is not finished ({', '.join(map(str, unfinished)) or 'no trials'}); "
                          "run its 'betavae sweep' command again to finish it, then ship it.")
    for t in trials:
        if t.get("run_dir") and Path(t["run_dir"]).resolve().is_relative_to(sweep_dir.resolve()):
            t["run_dir"] = Path(t["run_dir"]).resolve().relative_to(sweep_dir.resolve()).as_posix()
    destination = Path(root) / name if root is not None else STUDIES_ROOT / name
    if destination.exists() and not overwrite:
        raise ConfigError(f"study {destination} already exists; pass overwrite=True to replace it.")
    completed = [t for t in trials if t.get("state") == "COMPLETE"]
    record = {
        "name": name,
        "command": command,
        "hardware": hardware,
        "minutes": round(float(minutes), 1),
        "date": date or datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "trials": len(trials),
        "completed": len(completed),
        "weights": sorted({float(t["weight"]) for t in trials}),
        "seeds": sorted({int(t["seed"]) for t in trials}),
        "metric": summary.get("metric"),
        "recommended": recommendation.get("weight"),
        "made_with": f"betavae {betavae.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        **notes,
    }
    destination.parent.mkdir(parents=True, exist_ok=True)
    # written beside the destination and renamed into place: a failed copy leaves no half-written study
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=destination.parent))
    try:
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        shutil.copyfile(sweep_dir / RECOMMENDATION_FILE, staging / RECOMMENDATION_FILE)
        shutil.copyfile(sweep_dir / TRADEOFF_FIGURE, staging / TRADEOFF_FIGURE)
        (staging / STUDY_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def format_study(found: Study) -> str:
    """Two lines on a shipped study: what it swept, what it recommends, how it was made."""
    symbol, weights = found.weight_name, ", ".join(f"{r['weight']:g}" for r in found.per_weight)
    chosen = found.recommended
    head = f"recommended {symbol} = {chosen:g}" if chosen is not None else "no recommendation"
    meta = found.info
    return (f"{found.name}: {symbol} ∈ {{{weights}}} × {len(meta.get('seeds', []))} seeds, {head}\n"
            f"  {meta.get('command', '?')} ({meta.get('minutes', 0):.0f} min on {meta.get('hardware', '?')}, "
            f"{meta.get('date', '?')})\n  {found.path}")


def format_references() -> str:
    """One block per shipped model: recipe, training, headline metrics; then one per shipped study."""
    lines = []
    for name in names():
        meta = info(name)
        values = summary_values(evaluation(name))
        lines.append(f"{name}: {meta.get('summary', '')}")
        lines.append(f"  trained {meta.get('steps', '?'):,} steps ({meta.get('train_minutes', 0):.0f} min on "
                     f"{meta.get('hardware', '?')}); " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
        lines.append(f"  {path(name)}")
    if not lines:
        lines.append("no reference models are shipped with this installation")
    shipped = [found for found in map(study, studies()) if found is not None]
    if shipped:
        lines.append("\nstudies:")
        lines += [format_study(found) for found in shipped]
    return "\n".join(lines)


def _read(file: Path) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file} cannot be read ({exc}); reinstall betavae to restore its reference models.") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{file} does not hold a JSON object; reinstall betavae to restore it.")
    return value
