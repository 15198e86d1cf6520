"""One trial of a sweep: train (or resume) its run directory, evaluate it, and return its record."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

import betavae
from betavae.data import dataset_from_config
from betavae.metrics import evaluate_run
from betavae.metrics.evaluate import Progress
from betavae.sweep.progress import TrialPhase
from betavae.sweep.spec import SweepSpec
from betavae.training.config import TrainConfig
from betavae.training.parallel import train_group
from betavae.training.rundir import CONFIG_FILE, DIAGNOSIS_FILE, MODEL_FILE


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A float32 array as JSON-safe base64, so codes travel through the study database."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return {"shape": list(array.shape), "float32_base64": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_array(value: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(value["float32_base64"])
    return np.frombuffer(raw, dtype=np.float32).reshape(value["shape"]).copy()


def udr_images(dataset: Any, spec: SweepSpec) -> np.ndarray:
    """Indices of the images every trial encodes for UDR: the same for all trials (from ``eval_seed``)."""
    rng = np.random.default_rng([spec.eval_seed, 0x5D2])  # a stream of its own, apart from the metrics'
    n = min(spec.udr_samples, len(dataset))
    return np.sort(rng.choice(len(dataset), size=n, replace=False))


def udr_codes(run_dir: Path, spec: SweepSpec) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means (N, D) of the run's model on the sweep's UDR images, and the mean KL per latent."""
    model = betavae.load(run_dir)
    dataset = dataset_from_config(TrainConfig.load(run_dir))
    images = dataset.images(udr_images(dataset, spec))
    mus, logvars = [], []
    with torch.inference_mode():
        for start in range(0, len(images), 256):
            mu, logvar = model.encode(torch.from_numpy(np.ascontiguousarray(images[start:start + 256])))
            mus.append(mu.float())
            logvars.append(logvar.float())
    mu, logvar = torch.cat(mus).numpy(), torch.cat(logvars).numpy()
    kl = 0.5 * np.mean(mu**2 + np.exp(logvar) - logvar - 1.0, axis=0)  # (D,) KL(q(z_d|x) ‖ N(0, 1))
    return mu, kl


def flatten_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """``evaluate_run``'s record as ``{"metric.value": float}``."""
    flat = {}
    for name, entry in evaluation.get("metrics", {}).items():
        for key, value in entry["values"].items():
            flat[f"{name}.{key}"] = float(value)
    return flat


#: The prefix of the metric values a trial keeps from the record's ``reconstructed_factors``: one per factor,
#: e.g. ``reconstructed_factors.shape``, the share of reconstructions that show the image's shape.
READBACK_PREFIX = "reconstructed_factors"


def readback_values(evaluation: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """The record's ``reconstructed_factors`` (docs/metrics.md) as two flat dicts: per factor the share of
    reconstructions that show it (``{"reconstructed_factors.shape": 0.63, ...}``) and the floor of a decoder
    that ignores the code (``{"shape": 0.33, ...}``). Both empty when the record has no read-back (a dataset
    that is not a full factor grid)."""
    shares, floors = {}, {}
    for row in evaluation.get("reconstructed_factors") or []:
        shares[f"{READBACK_PREFIX}.{row['factor']}"] = float(row["accuracy"])
        floors[str(row["factor"])] = float(row["floor"])
    return shares, floors


def turn_degrees(evaluation: dict[str, Any]) -> float | None:
    """The largest angle between a pair of factors and the two dims that follow them (the record's
    ``factor_pairs``, docs/metrics.md): what explains a low MIG of dims that hold their factors.
    None without a pair (or without factors)."""
    angles = [float(p["angle"]) for p in evaluation.get("factor_pairs") or []]
    return max(angles) if angles else None


def run_trials(spec: SweepSpec, points: list[tuple[float, int]], log_paths: list[Path],
               phases: list[TrialPhase] | None = None) -> list[dict[str, Any] | Exception]:
    """Train and evaluate several trials; per trial its record or the error that stopped it.

    Trials whose run directory does not exist yet are trained together in one process
    (:func:`betavae.training.parallel.train_group`) when there are two or more of them; a trial an
    earlier attempt left half-trained is resumed alone from its newest checkpoint, a trained one is
    only evaluated. A failure of one trial (NaN loss, an existing directory it may not write) is that
    trial's outcome and does not stop the others. ``phases`` (one per point) are kept up to date.
    """
    configs = [spec.trial_config(weight, seed) for weight, seed in points]
    phases = phases or [TrialPhase(c.run_dir(), c.steps) for c in configs]
    outcomes: list[dict[str, Any] | Exception | None] = [None] * len(points)
    streams = []
    try:
        for path in log_paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            streams.append(open(path, "a", buffering=1))
        fresh = [i for i, c in enumerate(configs) if not c.run_dir().exists() or not any(c.run_dir().iterdir())]
        if len(fresh) > 1:
            names = ", ".join(configs[i].run_dir().name for i in fresh)
            for i in fresh:
                print(f"betavae sweep: training {len(fresh)} trials together in one process: {names}", file=streams[i])
                phases[i].training()
            try:
                results: list[Any] = train_group([configs[i] for i in fresh], [streams[i] for i in fresh])
            except Exception as exc:  # noqa: BLE001 - a failure before training is every member's outcome
                results = [exc] * len(fresh)
            for i, result in zip(fresh, results):
                if isinstance(result, Exception):
                    outcomes[i] = result
                    print(f"betavae sweep: {configs[i].run_dir()} failed: {result}", file=streams[i])
        for i, config in enumerate(configs):
            if outcomes[i] is not None or (len(fresh) > 1 and i in fresh):
                continue
            run_dir, stream = config.run_dir(), streams[i]
            phases[i].training()
            try:
                if (run_dir / MODEL_FILE).is_file():
                    print(f"betavae sweep: {run_dir} already trained; evaluating it", file=stream)
                elif (run_dir / CONFIG_FILE).is_file():
                    print(f"betavae sweep: resuming {run_dir} from its newest checkpoint", file=stream)
                    betavae.resume(run_dir, stream=stream)
                else:
                    betavae.train(config, stream=stream)
            except Exception as exc:  # noqa: BLE001 - recorded as this trial's failure
                outcomes[i] = exc
        for i, config in enumerate(configs):
            if outcomes[i] is None:
                try:
                    phases[i].evaluating()
                    outcomes[i] = evaluate_trial(spec, config.run_dir(), phases[i].evaluating)
                except Exception as exc:  # noqa: BLE001 - recorded as this trial's failure
                    outcomes[i] = exc
    finally:
        for stream in streams:
            stream.close()
    return outcomes  # type: ignore[return-value]


def evaluate_trial(spec: SweepSpec, run_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate a trained trial's run directory; the values the study stores for the trial."""
    evaluation = evaluate_run(run_dir, metrics=spec.metrics, seed=spec.eval_seed, params=spec.metric_params(),
                              progress=progress)
    diagnosis = json.loads((run_dir / DIAGNOSIS_FILE).read_text())
    mu, kl = udr_codes(run_dir, spec)
    shares, floors = readback_values(evaluation)
    return {
        "run_dir": str(run_dir),
        "reconstruction": float(diagnosis["reconstruction"]),
        "kl": float(diagnosis["kl"]),
        "kl_per_dim": [float(v) for v in diagnosis["kl_per_dim"]],
        "active_dims": int(len(diagnosis["active_dims"])),
        "turn_degrees": turn_degrees(evaluation),
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in {**flatten_metrics(evaluation), **shares}.items()},
        "readback_floor": floors,
        "udr_codes": encode_array(mu),
        "udr_kl_per_dim": [float(v) for v in kl],
    }
