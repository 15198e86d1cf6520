"""One trial of a sweep: train (or resume) its run directory, evaluate it, and return its record."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from betavae.sweep.spec import SweepSpec


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
    import betavae
    from betavae.data import dataset_from_config
    from betavae.training.config import TrainConfig

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


def run_trial(spec: SweepSpec, weight: float, seed: int, log_path: Path) -> dict[str, Any]:
    """Train the (weight, seed) trial, resuming its run directory when an earlier attempt left one,
    then evaluate it. Returns the values the study stores for the trial."""
    import betavae
    from betavae.metrics import evaluate_run
    from betavae.training.loop import MODEL_FILE

    config = spec.trial_config(weight, seed)
    run_dir = config.run_dir()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as stream:
        if (run_dir / MODEL_FILE).is_file():
            print(f"betavae sweep: {run_dir} already trained; evaluating it", file=stream)
        elif (run_dir / "config.json").is_file():
            print(f"betavae sweep: resuming {run_dir} from its newest checkpoint", file=stream)
            betavae.resume(run_dir, stream=stream)
        else:
            betavae.train(config, stream=stream)
    evaluation = evaluate_run(run_dir, metrics=spec.metrics, seed=spec.eval_seed, params=spec.metric_params())
    diagnosis = json.loads((run_dir / "diagnosis.json").read_text())
    mu, kl = udr_codes(run_dir, spec)
    return {
        "run_dir": str(run_dir),
        "reconstruction": float(diagnosis["reconstruction"]),
        "kl": float(diagnosis["kl"]),
        "kl_per_dim": [float(v) for v in diagnosis["kl_per_dim"]],
        "active_dims": int(len(diagnosis["active_dims"])),
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in flatten_metrics(evaluation).items()},
        "udr_codes": encode_array(mu),
        "udr_kl_per_dim": [float(v) for v in kl],
    }
