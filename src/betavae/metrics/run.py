"""Evaluating a trained run: wrap its VAE as an encoder, evaluate, write ``RUN/evaluation.json``."""

from __future__ import annotations

import copy
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import sklearn
import torch

from betavae.errors import ConfigError
from betavae.metrics.base import DEFAULT_BATCH_SIZE
from betavae.metrics.evaluate import evaluate_with_details
from betavae.training import rundir
from betavae.training.rundir import EVALUATION_FILE

REPRESENTATIONS = ("mean", "sampled")


class VAEEncoder:
    """A VAE as the numpy encoder metrics take: images ``(n, C, H, W)`` -> codes ``(n, D)``.

    ``representation="mean"`` gives the posterior means (the protocol's representation);
    ``"sampled"`` gives one draw z ~ q(z|x) per call and image, from ``generator``. The forward
    passes run on the model's device under ``torch.inference_mode``, ``batch_size`` images at a time,
    in the channels-last memory format for a convolutional model (about 1.5x faster on a 2-core CPU;
    a copy of the model is converted, the caller's is left as it is).
    """

    def __init__(self, model: torch.nn.Module, representation: str = "mean", batch_size: int = DEFAULT_BATCH_SIZE,
                 generator: torch.Generator | None = None):
        if representation not in REPRESENTATIONS:
            raise ConfigError(f"unknown representation '{representation}'; choose 'mean' or 'sampled'.")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        self.channels_last = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last) if self.channels_last else model
        self.representation = representation
        self.batch_size = batch_size
        # CPU generator: the same noise whatever the model's device
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.device = next(model.parameters()).device

    def codes_and_posterior(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(codes, mu, logvar)``, each float32 ``(n, D)``."""
        mus, logvars = [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size], dtype=np.float32))
                x = x.to(self.device)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                mu, logvar = self.model.encode(x)
                mus.append(mu.float().cpu())
                logvars.append(logvar.float().cpu())
        mu, logvar = torch.cat(mus), torch.cat(logvars)
        if self.representation == "mean":
            codes = mu
        else:
            noise = torch.randn(mu.shape, generator=self.generator)
            codes = mu + torch.exp(0.5 * logvar) * noise
        return codes.numpy(), mu.numpy(), logvar.numpy()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.codes_and_posterior(images)[0]


def encoder_fn(model: torch.nn.Module, representation: str = "mean", batch_size: int = DEFAULT_BATCH_SIZE,
               generator: torch.Generator | None = None) -> VAEEncoder:
    """Wrap a :class:`betavae.models.VAE` as the ``encode`` callable metrics take (see :class:`VAEEncoder`)."""
    return VAEEncoder(model, representation, batch_size, generator)


def _versions() -> dict[str, str]:
    import betavae

    return {"betavae": betavae.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "torch": torch.__version__, "python": platform.python_version()}


def evaluate_run(run_dir: str | Path, metrics: str | Iterable[str] = "all", seed: int = 0,
                 batch_size: int = DEFAULT_BATCH_SIZE, *, representation: str = "mean",
                 params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Evaluate the trained model of ``run_dir`` on its dataset and write ``run_dir/evaluation.json``.

    Returns what it writes: for each metric its values, parameters (sample counts included), seed
    and representation, with the library versions that produced them.
    """
    import betavae
    from betavae.data import dataset_from_config
    from betavae.files import write_json_atomic
    from betavae.training.config import TrainConfig

    from betavae.reference import refuse_writes

    run_dir = Path(run_dir)
    refuse_writes(run_dir, "evaluate")  # its evaluation.json is what it ships with
    config = TrainConfig.load(run_dir)
    with rundir.lock(run_dir):  # refused while the run trains (or is evaluated) elsewhere
        model = betavae.load(run_dir)
        dataset = dataset_from_config(config)  # the run's own data, factors included
        encode = encoder_fn(model, representation, batch_size, torch.Generator().manual_seed(int(seed)))
        details = evaluate_with_details(encode, dataset, metrics, seed, batch_size=batch_size, params=params)
        record = _record(run_dir, config, dataset, seed, representation, details)
        write_json_atomic(run_dir / EVALUATION_FILE, record)
    return record


def _record(run_dir: Path, config: Any, dataset: Any, seed: int, representation: str, details: Any) -> dict[str, Any]:
    """The evaluation.json record of ``details``."""
    return {
        "run_dir": str(run_dir),
        "dataset": getattr(dataset, "name", config.data or config.dataset),
        "seed": int(seed),
        "representation": representation,
        "versions": _versions(),
        "images_requested": details.images_requested,
        "images_encoded": details.images_encoded,
        "encode_seconds": round(details.encode_seconds, 3),
        "metrics": {
            name: {
                "values": values,
                "parameters": details.parameters(name),
                "seed": int(seed),
                "representation": representation,
                "seconds": round(details.seconds[name], 3),
            }
            for name, values in details.values.items()
        },
    }


def _values(results: Mapping[str, Any]) -> dict[str, Mapping[str, float]]:
    if "metrics" in results and isinstance(results["metrics"], Mapping):  # an evaluate_run record
        return {name: entry["values"] for name, entry in results["metrics"].items()}
    return dict(results)  # evaluate()'s {metric: {name: value}}


def format_table(results: Mapping[str, Any]) -> str:
    """A plain-text table of ``evaluate()`` results or an ``evaluate_run`` record."""
    rows = [(metric, key, value) for metric, values in _values(results).items() for key, value in values.items()]
    if not rows:
        return "(no metrics)"
    width_metric = max(len("metric"), *(len(r[0]) for r in rows))
    width_key = max(len("measure"), *(len(r[1]) for r in rows))
    lines = [f"{'metric':<{width_metric}}  {'measure':<{width_key}}  value", "-" * (width_metric + width_key + 12)]
    previous = None
    for metric, key, value in rows:
        shown = metric if metric != previous else ""
        lines.append(f"{shown:<{width_metric}}  {key:<{width_key}}  {float(value):.4f}")
        previous = metric
    return "\n".join(lines)
