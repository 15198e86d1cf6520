"""Evaluating a trained run: wrap its VAE as an encoder, evaluate, write ``RUN/evaluation.json``."""

from __future__ import annotations

import copy
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, TextIO

import numpy as np
import sklearn
import torch

import betavae
from betavae.checks import check_seed
from betavae.data import dataset_from_config
from betavae.data.base import FactorDataset
from betavae.errors import ConfigError
from betavae.files import write_json_atomic
from betavae.metrics.base import DEFAULT_BATCH_SIZE
from betavae.metrics.evaluate import EvaluationProgress, Progress, evaluate_with_details
from betavae.training import rundir
from betavae.training.config import TrainConfig
from betavae.training.distributed import SINGLE, device_for
from betavae.training.rundir import EVALUATION_FILE, refuse_writes

REPRESENTATIONS = ("mean", "sampled")
#: Images per forward pass on a CPU: small batches keep each layer's output in cache (a Burgess net
#: encodes about 2x faster at 128 than at 1024 on a 2-core CPU, docs/performance.md).
CPU_FORWARD_BATCH = 128


class VAEEncoder:
    """A VAE as the numpy encoder metrics take: images ``(n, C, H, W)`` -> codes ``(n, D)``.

    ``representation="mean"`` gives the posterior means (the protocol's representation);
    ``"sampled"`` gives one draw z ~ q(z|x) per call and image, from ``generator``. The forward
    passes run on the model's device under ``torch.inference_mode``, ``batch_size`` images at a time
    (default: :data:`CPU_FORWARD_BATCH` on a CPU, 1024 on a GPU), in the channels-last memory format
    for a convolutional model (about 1.5x faster on a 2-core CPU; a copy of the model is converted,
    the caller's is left as it is).
    """

    def __init__(self, model: torch.nn.Module, representation: str = "mean", batch_size: int | None = None,
                 generator: torch.Generator | None = None):
        if representation not in REPRESENTATIONS:
            raise ConfigError(f"unknown representation '{representation}'; choose 'mean' or 'sampled'.")
        device = next(model.parameters()).device
        if batch_size is None:
            batch_size = CPU_FORWARD_BATCH if device.type == "cpu" else DEFAULT_BATCH_SIZE
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        self.channels_last = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last) if self.channels_last else model
        self.representation = representation
        self.batch_size = batch_size
        # CPU generator: the same noise whatever the model's device
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.device = device

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


def encoder_fn(model: torch.nn.Module, representation: str = "mean", batch_size: int | None = None,
               generator: torch.Generator | None = None) -> VAEEncoder:
    """Wrap a :class:`betavae.models.VAE` as the ``encode`` callable metrics take (see :class:`VAEEncoder`)."""
    return VAEEncoder(model, representation, batch_size, generator)


def _versions() -> dict[str, str]:
    return {"betavae": betavae.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "torch": torch.__version__, "python": platform.python_version()}


def evaluate_run(run_dir: str | Path, metrics: str | Iterable[str] = "all", seed: int = 0,
                 batch_size: int | None = None, *, representation: str = "mean",
                 params: Mapping[str, Mapping[str, Any]] | None = None, device: str = "auto",
                 progress: Progress | None = None, readback_images: int | None = None) -> dict[str, Any]:
    """Evaluate the trained model of ``run_dir`` on its dataset and write ``run_dir/evaluation.json``.

    The model runs on ``device`` (``auto``: CUDA when present), ``batch_size`` images per forward
    pass (default: see :class:`VAEEncoder`); ``progress`` is told what runs (e.g. a
    :class:`ProgressPrinter`). Returns what it writes: for each metric its values, parameters
    (sample counts included), seed and representation, with the library versions that produced them;
    on data with factors the pairs of factors two dims follow (``factor_pairs``) and, on a full factor
    grid, which factors the reconstructions show (``reconstructed_factors``, read back from
    ``readback_images`` images, default :data:`betavae.report.analysis.READBACK_IMAGES`; 0 leaves it out).
    """
    from betavae.report.analysis import READBACK_IMAGES, factors_in_reconstructions

    check_seed(seed)
    readback_images = READBACK_IMAGES if readback_images is None else readback_images
    if isinstance(readback_images, bool) or not isinstance(readback_images, int) or readback_images < 0:
        raise ConfigError(f"readback_images must be a whole number >= 0 (0 leaves the read-back out), "
                          f"got {readback_images!r}.")
    run_dir = Path(run_dir)
    refuse_writes(run_dir, "evaluate")  # its evaluation.json is what it ships with
    config = TrainConfig.load(run_dir)
    with rundir.lock(run_dir):  # refused while the run trains (or is evaluated) elsewhere
        model = betavae.load(run_dir, device_for(device, SINGLE))
        dataset = dataset_from_config(config)  # the run's own data, factors included
        encode = encoder_fn(model, representation, batch_size, torch.Generator().manual_seed(int(seed)))
        # images read from the dataset at a time: whole forward passes, so that every pass has one shape
        read_batch = encode.batch_size * max(1, DEFAULT_BATCH_SIZE // encode.batch_size)
        details = evaluate_with_details(encode, dataset, metrics, seed, batch_size=read_batch, params=params,
                                        progress=progress)
        record = _record(run_dir, config, dataset, seed, representation, details, str(encode.device))
        if isinstance(dataset, FactorDataset):
            record["factor_pairs"] = factor_pairs(model, dataset, seed)
            if dataset.is_full_grid and readback_images > 0:
                record["reconstructed_factors"] = factors_in_reconstructions(model, dataset, readback_images, seed)
        write_json_atomic(run_dir / EVALUATION_FILE, record)
    return record


def factor_pairs(model: torch.nn.Module, dataset: FactorDataset, seed: int = 0) -> list[dict[str, Any]]:
    """The pairs of ordered factors that two dims of ``model``'s mean code follow, each with its angle to the
    dims' axes (:func:`betavae.report.analysis.pair_angles`, on ``MI_IMAGES`` images drawn with ``seed``):
    ``[{"factors": [f, g], "dims": [a, b], "angle": degrees, "r2": [r2_a, r2_b], "turned": bool}]``, where
    ``turned`` marks an angle of ``ROTATION_DEGREES`` or more, a pair that MIG scores low whatever its
    dims hold."""
    from betavae.report.analysis import ROTATION_DEGREES, code_factor_information

    pairs = code_factor_information(model, dataset, seed=seed).pair_angles()
    return [{"factors": list(p["factors"]), "dims": list(p["dims"]), "angle": round(p["angle"], 2),
             "r2": [round(v, 4) for v in p["r2"]], "turned": bool(p["angle"] >= ROTATION_DEGREES)} for p in pairs]


def _record(run_dir: Path, config: Any, dataset: Any, seed: int, representation: str, details: Any,
            device: str) -> dict[str, Any]:
    """The evaluation.json record of ``details``."""
    return {
        "run_dir": str(run_dir),
        "dataset": getattr(dataset, "name", config.data or config.dataset),
        "seed": int(seed),
        "representation": representation,
        "device": device,
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


class ProgressPrinter:
    """Shows an evaluation's progress on ``stream``: a bar while encoding on a terminal (a line per
    tenth elsewhere), then a line per metric with the seconds it took."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._shown_tenth = -1
        self._metric: tuple[str, float] | None = None

    def __call__(self, event: EvaluationProgress) -> None:
        if event.phase == "encoding":
            self._encoding(event.done, event.total)
            return
        self._close_bar()
        if self._metric is not None:
            name, started = self._metric
            print(f"  {name}: {time.perf_counter() - started:.1f} s", file=self.stream, flush=True)
            self._metric = None
        if event.phase == "scoring":
            print(f"betavae evaluate: metric {event.done + 1}/{event.total}: {event.metric}", file=self.stream, flush=True)
            self._metric = (event.metric, time.perf_counter())

    def _encoding(self, done: int, total: int) -> None:
        if self.stream.isatty():
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total, file=self.stream, unit="img", unit_scale=True, desc="encoding",
                                 dynamic_ncols=True)
            self._bar.update(done - self._bar.n)
            return
        tenth = done * 10 // max(total, 1)
        if tenth != self._shown_tenth:
            self._shown_tenth = tenth
            print(f"betavae evaluate: encoding {done:,}/{total:,} distinct images ({100 * done // max(total, 1)}%)",
                  file=self.stream, flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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
