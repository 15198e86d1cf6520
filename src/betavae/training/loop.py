"""The training loop: one function, readable top to bottom.

Per step: draw a batch by index from the images held compactly on the training device, run the
model, let the objective turn its output into a loss, step Adam, let the objective train its own
networks if it has any. Logged terms are summed on the device and read (one sync) only every
``log_every`` steps, where they are averaged, checked for NaN and written out.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from betavae.data import ImageDataset, dataset_from_config
from betavae.errors import CheckpointError, ConfigError, TrainingError
from betavae.files import write_bytes_atomic, write_json_atomic
from betavae.models import VAE, build_model, is_convolutional
from betavae.models.architectures import check_image_shape
from betavae.objectives import build_objective
from betavae.training.checkpoint import list_checkpoints, load_checkpoint, load_module_state, load_tensors, save_checkpoint
from betavae.training.config import TrainConfig
from betavae.training.diagnostics import diagnose, format_diagnosis, reconstruction_baseline
from betavae.training.logging import TrainingLog, read_metrics, truncate_metrics

MODEL_FILE = "model.safetensors"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' was asked for, but CUDA is not available here; use --device cpu or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) found.")
    return device


def prepare_run_dir(config: TrainConfig) -> Path:
    """Create the run directory; refuse to touch an existing one unless it is a run and overwrite is set."""
    run_dir = config.run_dir()
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        if not config.overwrite:
            raise ConfigError(
                f"run directory {run_dir} already exists; choose another --out, resume it with "
                f"'betavae train --resume {run_dir}', or pass --overwrite to replace it."
            )
        if not (run_dir / "config.json").is_file():
            raise ConfigError(
                f"{run_dir} exists and is not a betavae run directory (no config.json); betavae will not "
                "delete it even with --overwrite. Choose another --out."
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(config: TrainConfig, stream: TextIO | None = None) -> Path:
    """Train a model as ``config`` says; returns the run directory."""
    config.validate()
    resolve_device(config.device)
    dataset = dataset_from_config(config)  # bad data is reported before the run directory is made
    check_image_shape(config.arch, dataset.image_shape)
    if config.batch_size > len(dataset):
        raise ConfigError(f"batch size {config.batch_size} exceeds the {len(dataset)} images of the dataset; lower --batch-size.")
    run_dir = prepare_run_dir(config)
    config.save(run_dir / "config.json")
    return _train(config, run_dir, dataset, None, stream)


def resume(run_dir: str | Path, steps: int | None = None, stream: TextIO | None = None) -> Path:
    """Continue the run in ``run_dir`` from its newest intact checkpoint (to ``steps`` if given)."""
    run_dir = Path(run_dir)
    config = TrainConfig.load(run_dir)
    if steps is not None:
        config.steps = steps
    config.validate()
    state = None
    for path in reversed(list_checkpoints(run_dir)):  # the newest intact one
        try:
            state = load_checkpoint(path)
            break
        except CheckpointError as exc:
            print(f"betavae: skipping damaged checkpoint {path}: {exc}", file=stream or sys.stderr)
    finished = state is not None and state["step"] >= config.steps
    if finished and (run_dir / MODEL_FILE).exists():
        raise ConfigError(
            f"{run_dir} already reached step {state['step']} of {config.steps}; pass a larger --steps to train further."
        )
    if steps is not None:
        config.save(run_dir / "config.json")
    # No checkpoint yet (killed early): start again from step 0 in the same directory.
    return _train(config, run_dir, dataset_from_config(config), state, stream)


def _train(config: TrainConfig, run_dir: Path, dataset: ImageDataset, checkpoint: dict[str, Any] | None,
           stream: TextIO | None) -> Path:
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[]):  # seeded weight init without touching global RNG state
        torch.manual_seed(config.seed)
        model = build_model(config.arch, config.latents, dataset.image_shape)
    channels_last = is_convolutional(config.arch)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    objective = build_objective(config, len(dataset)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator(device).manual_seed(config.seed)
    sums: dict[str, Any] = {}  # logged terms summed since the last log step
    sums_count = start = skipped = 0
    if checkpoint is not None:
        load_module_state(model, checkpoint["model"], run_dir)
        optimizer.load_state_dict(checkpoint["optimizer"])
        objective.load_state_dict(checkpoint["objective"])
        objective.load_auxiliary_state(checkpoint["objective_auxiliary"])
        generator.set_state(checkpoint["generator"])
        sums = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in checkpoint["log_sums"].items()}
        sums_count = checkpoint["log_count"]
        skipped = checkpoint.get("skipped_steps", 0)
        start = checkpoint["step"]
    truncate_metrics(run_dir, start)  # records after the checkpoint are written again

    store = dataset.training_store(device)
    baseline = reconstruction_baseline(dataset, config.likelihood, config.likelihood_scale, np.random.default_rng(config.seed))
    model_spec = {"arch": config.arch, "latents": config.latents, "image_shape": list(dataset.image_shape)}
    log = TrainingLog(run_dir, config.steps, start, stream, regulariser_label=objective.regulariser_label)
    log.message(
        f"betavae: training {config.objective} ({objective.weight_label()}) on {getattr(dataset, 'name', 'data')} "
        f"({len(dataset)} images {tuple(dataset.image_shape)}) with {config.arch}, {config.latents} latents, "
        f"on {device}; steps {start}..{config.steps}; run directory {run_dir}"
    )
    model.train()
    interval_start, interval_steps, started = time.perf_counter(), 0, time.perf_counter()
    try:
        for step in range(start, config.steps):
            indices = torch.randint(len(store), (config.batch_size,), device=device, generator=generator)
            x = store.batch(indices)  # (B, C, H, W) float32 in [0, 1]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            output = model(x, generator)
            loss, logs = objective(output, x, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.skip_nonfinite and not _step_is_finite(loss, model):
                skipped += 1
                log.message(f"betavae: step {step + 1}: loss or gradients are NaN/inf; step skipped "
                            f"({skipped} of at most {config.skip_nonfinite})")
                if skipped > config.skip_nonfinite:
                    raise TrainingError(
                        f"more than {config.skip_nonfinite} steps had NaN/inf loss or gradients (--skip-nonfinite); "
                        f"lower --lr (now {config.lr:g}) or β and train again."
                    )
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
                logs.update(objective.update_auxiliary(output, x, step))
                for key, value in logs.items():  # summed on the device: no sync here
                    value = value.detach() if isinstance(value, torch.Tensor) else value
                    sums[key] = sums[key] + value if key in sums else value
                sums_count += 1
            log.advance()
            interval_steps += 1
            done = step + 1
            is_log_step = done % config.log_every == 0 or done == config.steps
            is_checkpoint_step = done % config.checkpoint_every == 0 or done == config.steps
            if is_log_step or is_checkpoint_step:
                _check_finite(sums, model, done, config, run_dir, objective.weight_label())
            if is_log_step and sums_count:  # (every step of the interval may have been skipped)
                elapsed = time.perf_counter() - interval_start
                speed = interval_steps * config.batch_size / elapsed
                log.write(_record(sums, sums_count, done, config, speed, time.perf_counter() - started))
                sums, sums_count, interval_start, interval_steps = {}, 0, time.perf_counter(), 0
            if is_checkpoint_step:
                save_checkpoint(run_dir, done, {
                    "step": done,
                    "model_spec": model_spec,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "objective": objective.state_dict(),
                    "objective_auxiliary": objective.auxiliary_state(),
                    "generator": generator.get_state(),
                    "log_sums": sums,
                    "log_count": sums_count,
                    "skipped_steps": skipped,
                }, keep=config.keep_checkpoints)
    finally:
        log.close()

    save_model(run_dir / MODEL_FILE, model, model_spec)
    history = read_metrics(run_dir)
    if not history:
        raise TrainingError(f"no training step of {run_dir} succeeded, so there is nothing to diagnose; lower --lr.")
    diagnosis = diagnose(history[-1], objective.weight_label(), config.collapse_threshold, baseline, len(dataset))
    write_json_atomic(run_dir / "diagnosis.json", diagnosis)
    log.message("betavae: diagnosis\n" + format_diagnosis(diagnosis))
    if config.figures:
        from betavae.report.figures import make_figures

        figures = make_figures(run_dir, model.eval(), dataset, history, diagnosis, seed=config.seed)
        log.message(f"betavae: figures in {figures}")
        from betavae.report import run_report

        log.message(f"betavae: report in {run_report(run_dir, model, dataset, seed=config.seed)}")
    log.message(f"betavae: done; model, logs and figures are in {run_dir}")
    return run_dir


def _step_is_finite(loss: torch.Tensor, model: VAE) -> bool:
    """Whether the loss and every gradient are finite (one device sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = loss.detach() + sum(g.sum() for g in grads) * 0.0  # NaN/inf anywhere makes this non-finite
    return bool(torch.isfinite(total))


def _check_finite(sums: dict[str, Any], model: VAE, step: int, config: TrainConfig, run_dir: Path,
                  weight: str) -> None:
    """Stop with a clear message when the logged loss or the weights are NaN/inf (before any checkpoint)."""
    loss = sums.get("loss")
    bad_loss = loss is not None and not math.isfinite(float(loss))
    if bad_loss or not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        checkpoints = list_checkpoints(run_dir)
        kept = f"The last good checkpoint, {checkpoints[-1]}, is kept." if checkpoints else "No checkpoint had been written yet."
        raise TrainingError(
            f"the loss or the weights became NaN or infinite by step {step}. Likely causes: a learning rate too high "
            f"(--lr {config.lr:g}), a very large regularisation weight ({weight}), or a likelihood scale too small "
            f"(--likelihood-scale {config.likelihood_scale:g}). {kept} Lower --lr and train again, or "
            "pass --skip-nonfinite N to skip a few bad steps."
        )


def _record(sums: dict[str, Any], count: int, step: int, config: TrainConfig, images_per_second: float,
            elapsed: float) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    for key, total in sums.items():
        mean = total / count
        record[key] = mean.tolist() if isinstance(mean, torch.Tensor) and mean.ndim else float(mean)
    record["active_dims"] = sum(v >= config.collapse_threshold for v in record["kl_per_dim"])
    record["images_per_second"] = images_per_second
    record["elapsed_seconds"] = elapsed
    return record


def save_model(path: Path, model: VAE, model_spec: dict[str, Any]) -> None:
    """Final weights as safetensors, the model's architecture in the file's metadata."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={"betavae_model": json.dumps(model_spec)})
    write_bytes_atomic(path, data)


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> VAE:
    """The trained model of a run (its final weights), in eval mode on ``device``."""
    path = Path(run_dir) / MODEL_FILE if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist: the run has not finished. Resume it with 'betavae train --resume {run_dir}'."
        )
    tensors = load_tensors(path)
    try:
        with safe_open(str(path), "pt") as f:
            spec = json.loads((f.metadata() or {})["betavae_model"])
        model = build_model(spec["arch"], int(spec["latents"]), tuple(spec["image_shape"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} lacks a valid betavae model description ({exc}); it was not written by betavae.") from exc
    load_module_state(model, tensors, path)
    return model.to(device).eval()
