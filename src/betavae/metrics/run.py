"""Evaluating a trained run: wrap its VAE as an encoder, evaluate, write ``RUN/evaluation.json``."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, TextIO

import numpy as np
import sklearn
import torch

import betavae
from betavae.checks import check_data_fits_model, check_device, check_seed, shown
from betavae.data import dataset_from_config
from betavae.data.base import FactorDataset
from betavae.errors import ConfigError
from betavae.files import fsync_dir, write_json_atomic
from betavae.metrics.base import DEFAULT_BATCH_SIZE
from betavae.metrics.evaluate import EvaluationProgress, Progress, evaluate_with_details
from betavae.training import rundir
from betavae.training.config import TrainConfig
from betavae.training.distributed import SINGLE, device_for
from betavae.training.loop import behind_checkpoint_note, model_step
from betavae.training.memory import GIB, MAX_SIZE, device_memory, layer_outputs
from betavae.training.rundir import EVALUATION_FILE, MODEL_FILE, refuse_writes

REPRESENTATIONS = ("mean", "sampled")
#: Images per forward pass on a CPU: small batches keep each layer's output in cache (a Burgess net
#: encodes about 2x faster at 128 than at 1024 on a 2-core CPU, docs/performance.md).
CPU_FORWARD_BATCH = 128
#: What an earlier evaluation.json must share with a new evaluation for its other metrics to be kept beside
#: the new ones: the model (its step and file hash), the data, the seed and the representation.
SAME_EVALUATION = ("model", "dataset", "seed", "representation")


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
    (sample counts included), seed and representation, with the library versions that produced them
    and the model they are of (``model``: its step and the SHA-256 of its file); on data with factors
    the pairs of factors two dims follow (``factor_pairs``) and, on a full factor grid, which factors
    the reconstructions show (``reconstructed_factors``, read back from ``readback_images`` images,
    default :data:`betavae.report.analysis.READBACK_IMAGES`; 0 leaves it out).

    The metrics of an earlier ``evaluation.json`` of the same model, data, seed and representation
    that this call does not compute are kept (named in ``kept_metrics``); an earlier file of anything
    else is kept as ``evaluation-<its step, seed and representation>.json`` (see :func:`merge_earlier`).
    What either did is told on stderr.
    """
    from betavae.report.analysis import READBACK_IMAGES, factors_in_reconstructions

    check_seed(seed)
    check_device(device)
    readback_images = READBACK_IMAGES if readback_images is None else readback_images
    if isinstance(readback_images, bool) or not isinstance(readback_images, int) or readback_images < 0:
        raise ConfigError(f"readback_images must be a whole number >= 0 (0 leaves the read-back out), "
                          f"got {readback_images!r}.")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or not 1 <= batch_size <= MAX_SIZE):
        raise ConfigError(f"--batch-size must be a whole number from 1 to {MAX_SIZE:,}, got {shown(batch_size)}; "
                          f"the default ({CPU_FORWARD_BATCH} on a CPU, {DEFAULT_BATCH_SIZE:,} on a GPU) is fast.")
    run_dir = Path(run_dir)
    refuse_writes(run_dir, "evaluate")  # its evaluation.json is what it ships with
    config = TrainConfig.load(run_dir)
    with rundir.lock(run_dir):  # refused while the run trains (or is evaluated) elsewhere
        model = betavae.load(run_dir, device_for(device, SINGLE))
        behind = behind_checkpoint_note(run_dir)
        if behind:
            print(f"betavae evaluate: note: {behind}", file=sys.stderr, flush=True)
        identity = model_identity(run_dir)
        dataset = dataset_from_config(config)  # the run's own data, factors included
        check_data_fits_model(dataset, model, run_dir)
        encode = encoder_fn(model, representation, batch_size, torch.Generator().manual_seed(int(seed)))
        # images read from the dataset at a time: whole forward passes, so that every pass has one shape
        read_batch = encode.batch_size * max(1, DEFAULT_BATCH_SIZE // encode.batch_size)
        check_encoding_memory(model, dataset.image_shape, read_batch, encode.device)
        details = evaluate_with_details(encode, dataset, metrics, seed, batch_size=read_batch, params=params,
                                        progress=progress)
        record = _record(run_dir, config, dataset, seed, representation, details, str(encode.device), identity)
        if isinstance(dataset, FactorDataset):
            record["factor_pairs"] = factor_pairs(model, dataset, seed)
            if dataset.is_full_grid and readback_images > 0:
                record["reconstructed_factors"] = factors_in_reconstructions(model, dataset, readback_images, seed)
        record, notice = merge_earlier(run_dir, record)
        write_json_atomic(run_dir / EVALUATION_FILE, record)
    if notice:
        print(f"betavae evaluate: {notice}", file=sys.stderr, flush=True)
    return record


def model_identity(run_dir: Path) -> dict[str, Any]:
    """What identifies the trained model of ``run_dir``: the step its file was saved at (None when the file
    does not say) and the SHA-256 of the file."""
    path = run_dir / MODEL_FILE
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return {"step": model_step(path), "sha256": digest.hexdigest()}


def check_encoding_memory(model: torch.nn.Module, image_shape: tuple[int, ...], images: int,
                          device: torch.device) -> None:
    """Refuse forward passes of ``images`` images that would clearly need more memory than ``device`` has
    (counted as a training step counts them, :mod:`betavae.training.memory`: the input and every layer's
    output of each image, 4 bytes a number)."""
    per_image = 4 * (int(np.prod(image_shape)) + layer_outputs(model, tuple(image_shape)))
    need = images * per_image
    memory = device_memory(str(device))
    if need < GIB or memory is None or need <= memory[0]:
        return
    have, where = memory
    fits = max(1, have // per_image)
    raise ConfigError(f"encoding {images:,} images per pass would need about {need / GIB:,.1f} GiB "
                      f"({per_image / 2**10:,.0f} KiB an image) but {where} is {have / GIB:,.1f} GiB; lower "
                      f"--batch-size to at most {fits:,} (the default, {CPU_FORWARD_BATCH} on a CPU and "
                      f"{DEFAULT_BATCH_SIZE:,} on a GPU, is fast).")


def merge_earlier(run_dir: Path, record: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``record`` with what it keeps of ``run_dir``'s earlier evaluation.json, and what was done, in words.

    An earlier record of the same model, data, seed and representation (:data:`SAME_EVALUATION`) gives
    the metrics ``record`` lacks (listed in ``kept_metrics``; those computed with other library versions
    carry their own ``versions``) and its ``factor_pairs`` and ``reconstructed_factors`` where ``record``
    has none. Any other earlier file (another model, other settings, written before evaluations named
    their model, unreadable) is copied to ``evaluation-<step, seed, representation>.json`` (a free name;
    nothing is overwritten) before ``record`` replaces it.
    """
    path = run_dir / EVALUATION_FILE
    if not path.is_file():
        return {**record, "kept_metrics": []}, None
    try:
        earlier = json.loads(path.read_text())
        problem = None if isinstance(earlier, dict) else "holds no evaluation record"
    except (OSError, ValueError) as exc:
        earlier, problem = None, f"is not readable JSON ({type(exc).__name__})"
    if problem is None:
        told = {"model": "another model", "dataset": f"other data ({shown(earlier.get('dataset'))})",
                "seed": f"seed {shown(earlier.get('seed'))}",
                "representation": f"{shown(earlier.get('representation'))} codes"}
        different = [told[key] for key in SAME_EVALUATION if earlier.get(key) != record[key]]
        if "model" not in earlier:
            problem = "does not name its model (it was written before evaluations did)"
        elif different:
            problem = f"is of {', '.join(different)}"
        elif not (isinstance(earlier.get("metrics"), dict)
                  and all(isinstance(e, dict) for e in earlier["metrics"].values())):
            problem = "has metrics that cannot be read"
    if problem is not None:
        kept_as = _keep_aside(path, earlier)
        return ({**record, "kept_metrics": []},
                f"the earlier {EVALUATION_FILE} {problem}, so its metrics are not mixed with these: it is kept as "
                f"{kept_as}, and {EVALUATION_FILE} holds this evaluation alone.")
    kept = [name for name in earlier["metrics"] if name not in record["metrics"]]
    versions = earlier.get("versions")
    metrics = {name: entry if name in record["metrics"] or "versions" in entry or versions == record["versions"]
               else {**entry, "versions": versions}
               for name, entry in {**earlier["metrics"], **record["metrics"]}.items()}
    merged = {**record, "metrics": metrics, "kept_metrics": kept}
    for key in ("factor_pairs", "reconstructed_factors"):  # of the same model and seed: still true
        if key not in merged and key in earlier:
            merged[key] = earlier[key]
    if not kept:
        return merged, None
    return merged, (f"kept {', '.join(kept)} from the earlier {EVALUATION_FILE} (same model, data, seed and "
                    f"representation) beside the metrics computed now.")


def _keep_aside(path: Path, earlier: Any) -> str:
    """Copy ``path`` to a free ``evaluation-<label>.json`` beside it (never over a file); the name it got."""
    parts = []
    if isinstance(earlier, dict):
        step = (earlier.get("model") or {}).get("step") if isinstance(earlier.get("model"), dict) else None
        seed = earlier.get("seed")
        parts += [f"step{step}"] if isinstance(step, int) and not isinstance(step, bool) else []
        parts += [f"seed{seed}"] if isinstance(seed, int) and not isinstance(seed, bool) else []
        parts += [earlier["representation"]] if earlier.get("representation") in REPRESENTATIONS else []
    label = "-".join(parts) or ("earlier" if isinstance(earlier, dict) else "unreadable")
    data = path.read_bytes()
    for n in range(1, 10**6):
        target = path.with_name(f"{path.stem}-{label}{'' if n == 1 else f'-{n}'}{path.suffix}")
        try:
            with open(target, "xb") as f:  # exclusive: an existing file is never replaced
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except FileExistsError:
            continue
        fsync_dir(path.parent)
        return target.name
    raise ConfigError(f"no free name to keep the earlier {path} under; move the evaluation-*.json files beside it.")


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
            device: str, model: dict[str, Any]) -> dict[str, Any]:
    """The evaluation.json record of ``details``, of the model ``model`` identifies (:func:`model_identity`)."""
    return {
        "run_dir": str(run_dir),
        "model": model,
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
