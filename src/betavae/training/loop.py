"""The training loop: one function, readable top to bottom.

Per step: draw a batch by index from the images held compactly on the training device and the
reparameterisation noise, run the model (under bf16 autocast when ``precision`` says so, compiled
when ``compile`` says so), let the objective turn its output, cast to fp32, into a loss, step Adam,
let the objective train its own networks if it has any. Logged terms are summed on the device and
read (one sync) only every ``log_every`` steps, where they are averaged, checked for NaN and written out.

Under torchrun every process runs this loop on its slice of each global batch, with the model in
DistributedDataParallel (see :mod:`betavae.training.distributed`); process 0 alone writes the run.
The same loop, :func:`run_steps`, trains several models at once (:mod:`betavae.training.parallel`
stacks them into one network): each model is a :class:`Member` with its own batch, noise,
objective, logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, ParamSpec, TextIO, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from betavae.data import ImageDataset, dataset_from_config
from betavae.errors import CheckpointError, ConfigError, TrainingError
from betavae.files import write_bytes_atomic, write_json_atomic
from betavae.models import VAE, init_output_bias, is_convolutional, model_from_spec, model_spec
from betavae.models.architectures import check_image_shape
from betavae.models.vae import VAEOutput
from betavae.objectives import Objective, build_objective
from betavae.objectives.beta_vae import BetaVAE
from betavae.training.checkpoint import (list_checkpoints, load_module_state, load_tensors, newest_training_checkpoint,
                                         save_checkpoint)
from betavae.training.config import CONFIG_FILE, TrainConfig
from betavae.training import distributed, rundir
from betavae.training.diagnostics import (LiveDiagnosis, constant_image, diagnose_run, format_diagnosis,
                                          reconstruction_baseline)
from betavae.training.distributed import Distributed
from betavae.training.logging import TrainingLog, read_metrics, truncate_metrics
from betavae.training.rundir import DAMAGED_METRICS_FILE, DIAGNOSIS_FILE, METRICS_FILE, MODEL_FILE


def resolve_device(name: str, dist: Distributed = distributed.SINGLE) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; an explicit CUDA device must exist.

    Under torchrun each process takes ``cuda:LOCAL_RANK`` (or the CPU).
    """
    return distributed.device_for(name, dist)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``, or None for plain fp32."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def arithmetic(precision: str, device: torch.device) -> str:
    """What the model's matrix products run in under ``precision`` on ``device``: bf16, tf32 or fp32."""
    if resolve_precision(precision, device) is not None:
        return "bf16"
    return "tf32" if precision == "tf32" else "fp32"


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a ``precision`` that ``device`` does not have: TF32 is an NVIDIA GPU format."""
    if precision == "tf32" and device.type != "cuda":
        raise ConfigError(f"--precision tf32 is the TensorFloat-32 arithmetic of NVIDIA GPUs (Ampere and later) and "
                          f"needs a CUDA device, but this run trains on {device}; use fp32 (or bf16) there.")


@contextlib.contextmanager
def matmul_arithmetic(precision: str) -> Iterator[None]:
    """With ``precision`` tf32: float32 matrix products in TensorFloat-32 while inside
    (``torch.set_float32_matmul_precision("high")``), the process's earlier setting afterwards. PyTorch
    already runs float32 convolutions in TF32 by default (``torch.backends.cudnn.conv.fp32_precision``), so
    this adds the linear layers: the fully connected ones of the nets, and FactorVAE's discriminator.
    Any other precision: nothing changes."""
    if precision != "tf32":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _check_compile(config: TrainConfig, device: torch.device) -> None:
    if config.compile == "cudagraphs" and device.type != "cuda":
        raise ConfigError(f"--compile cudagraphs captures CUDA graphs and needs a CUDA device, but this run trains on "
                          f"{device}; use --compile on (or off) there.")


P = ParamSpec("P")
R = TypeVar("R")


def flush_denormals() -> bool:
    """Treat subnormal floats (magnitudes below 1.2e-38) as zero in CPU arithmetic, from now on; False where
    the CPU cannot.

    On x86, arithmetic on subnormal numbers is many times slower than on normal ones, and training makes
    them: Adam's first moment of a weight whose gradient has vanished shrinks by β1 = 0.9 a step into
    that range and stays there. On the disentanglement_lib net (FactorVAE, 2-core CPU), 102,640 subnormal
    values had built up after 30 minutes and the rate had fallen from 830–860 to 510–550 images/s; trained on
    from that checkpoint, 519 images/s with them kept against 696 flushed (``benchmarks/cpu_denormals.py``,
    docs/performance.md). Values that small change no step beyond float rounding. TensorFlow flushes them
    by default; PyTorch does not.

    The setting belongs to each CPU thread (numpy's arithmetic in it too) and is copied to the threads
    started after it, so it reaches all of torch's worker threads only when set before the process's
    first parallel operation. The command line sets it first thing (:func:`denormals_flushed`);
    :func:`betavae.train` and its kin set it for the calling thread while they run. In a script, call
    ``betavae.flush_denormals()`` before anything else for the full effect; it stays set.
    """
    return bool(torch.set_flush_denormal(True))


def _flushing() -> bool:
    """Whether this thread's CPU arithmetic flushes subnormal results to zero now."""
    return (torch.tensor([torch.finfo(torch.float32).tiny]) / 4).item() == 0.0


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """:func:`flush_denormals` for this thread while inside; the thread's earlier setting afterwards (a caller's
    own code, and libraries that check for subnormals, see the state they had)."""
    before = _flushing()
    flush_denormals()
    try:
        yield
    finally:
        if not before:
            torch.set_flush_denormal(False)


def with_denormals_flushed(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run inside :func:`denormals_flushed`."""
    @functools.wraps(function)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with denormals_flushed():
            return function(*args, **kwargs)
    return wrapped


def _setup(config: TrainConfig) -> tuple[Distributed, torch.device]:
    """This process's place under torchrun (if any) and its device; refuses what cannot run there."""
    dist = distributed.from_environment()
    device = resolve_device(config.device, dist)
    _check_compile(config, device)
    check_precision(config.precision, device)
    distributed.check_config(config, dist)
    return dist, device


def make_adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with its fused kernel (one pass over the weights per step) on CPU and CUDA, where PyTorch has
    it: the same update as the default implementation up to float rounding, and about 1.06x training
    throughput on a CPU (docs/performance.md). A resumed run keeps the implementation its checkpoint
    was saved with."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, then each per-weight state tensor in its weight's memory layout.

    A checkpoint stores tensors contiguous, while convolution weights train channels-last; PyTorch's
    fused Adam walks a weight and its moments as flat memory, so moments in another layout would be
    applied to the wrong elements (silently). Copying them into the weight's layout prevents that.
    """
    fresh = [dict(group) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, default in zip(optimizer.param_groups, fresh):  # a damaged value fails here, not at the first step
        for key, value in default.items():
            if key != "params" and not _same_kind(group.get(key), value):
                raise ValueError(f"optimizer setting '{key}' is {group.get(key)!r}, expected a value like {value!r}")
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if not isinstance(value, torch.Tensor) or not value.is_floating_point() or (
                        key != "step" and value.shape != param.shape) or (key == "step" and value.numel() != 1):
                    raise ValueError(f"optimizer state '{key}' of a weight of shape {tuple(param.shape)} is damaged")
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            for key, value in moments.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    moments[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _same_kind(value: Any, default: Any) -> bool:
    """Whether an optimizer setting read from a checkpoint has the form of its default (numbers as numbers)."""
    if isinstance(default, bool) or default is None:
        return value is None or isinstance(value, bool)  # flags: saved by another PyTorch, None may stand for False
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and len(value) == len(default) and all(
            _same_kind(v, d) for v, d in zip(value, default))
    return isinstance(value, type(default))


class TrainingForward(nn.Module):
    """One training forward pass of a VAE, given the reparameterisation noise ``eps`` drawn by the loop.

    Returns ``(mu, logvar, z, recon)``, every one in fp32 whatever autocast did inside, so the
    objective's KL and likelihood are computed in fp32. It is the module that DistributedDataParallel
    and torch.compile wrap; its parameters are the VAE's.
    """

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mu, logvar = self.vae.encode(x)
        mu, logvar = mu.float(), logvar.float()
        z = mu + eps * torch.exp(0.5 * logvar)  # as objectives.gaussian.reparameterize
        return mu, logvar, z, self.vae.decode(z).float()


def _compiled(forward: nn.Module, mode: str) -> nn.Module:
    if mode == "off":
        return forward
    return torch.compile(forward, mode="reduce-overhead" if mode == "cudagraphs" else None)


class SilentLog:
    """The log of a torchrun process other than 0: it writes nothing."""

    def advance(self, steps: int = 1) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@with_denormals_flushed
def train(config: TrainConfig, stream: TextIO | None = None) -> Path:
    """Train a model as ``config`` says; returns the run directory.

    Started by torchrun (``WORLD_SIZE`` set), it trains data-parallel with the other processes. A
    relative ``data`` or ``factors`` path is saved as the absolute path it names now.
    """
    config = config.validate().with_absolute_paths()
    dist, device = _setup(config)
    with distributed.process_group(dist, device):
        # Bad data is reported before the run directory is made; process 0 fills a dataset cache first.
        dataset = distributed.agree(dist, lambda: _checked_dataset(config), main_first=True)
        with contextlib.ExitStack() as held:  # process 0 holds the run directory's lock until the end
            run_dir = distributed.agree(dist, lambda: held.enter_context(rundir.create(config)).run_dir,
                                        main_only=True)
            with rundir.explaining_write_errors(run_dir):
                return _train(config, run_dir, dataset, None, stream, dist, device)


def _checked_dataset(config: TrainConfig) -> ImageDataset:
    dataset = dataset_from_config(config)
    check_image_shape(config.arch, dataset.image_shape)
    if config.batch_size > len(dataset):
        raise ConfigError(f"batch size {config.batch_size} exceeds the {len(dataset)} images of the dataset; lower --batch-size.")
    return dataset


@with_denormals_flushed
def resume(run_dir: str | Path, steps: int | None = None, stream: TextIO | None = None, *,
           time_limit: float | None = None) -> Path:
    """Continue the run in ``run_dir`` from its newest intact checkpoint (to ``steps`` if given).

    ``time_limit`` replaces the run's ``--time-limit`` (minutes of training in all, counted over
    every resume), so a run stopped by its time limit can train further.

    Under torchrun every process reads the run directory (on several machines it must be on a
    filesystem they all see); a checkpoint continues with any number of processes.
    """
    run_dir = Path(run_dir)
    config = TrainConfig.load(run_dir)
    saved_steps = config.steps
    if steps is not None:
        config.steps = steps
    if time_limit is not None:
        config.time_limit = time_limit
    config.validate()
    dist, device = _setup(config)
    with distributed.process_group(dist, device), contextlib.ExitStack() as held:
        # process 0 holds the lock from before the checkpoints are read until the run is finished
        distributed.agree(dist, lambda: held.enter_context(rundir.open_existing(run_dir)).run_dir, main_only=True)

        def warn(text: str) -> None:
            if dist.is_main:
                print(text, file=stream or sys.stderr)

        state = distributed.agree(dist, lambda: newest_training_checkpoint(run_dir, warn))
        model_file = run_dir / MODEL_FILE
        if state is None and model_file.exists():
            raise CheckpointError(f"{run_dir} holds a final model but no checkpoint to continue from, so it is not "
                                  "resumed (that would start it over); train a new run (another --out) instead.")
        if state is not None:
            rundir.check_unchanged(state, config, run_dir)
        # finished: its model is of its newest checkpoint (a model of an earlier step: trained further since)
        finished = state is not None and state["step"] >= config.steps and model_file.exists() and \
            model_step(model_file) in (None, state["step"])
        if finished:
            raise ConfigError(
                f"{run_dir} already reached step {state['step']} of {config.steps}; pass a larger --steps to train further."
            )
        schedule_change = state is not None and _schedule_change(saved_steps, config, state["step"])
        if schedule_change:
            warn(schedule_change)
        dataset = distributed.agree(dist, lambda: dataset_from_config(config), main_first=True)
        read_metrics(run_dir)  # an unreadable training log stops the resume before anything is written
        with rundir.explaining_write_errors(run_dir):
            # No checkpoint yet (killed early): start again from step 0 in the same directory.
            return _train(config, run_dir, dataset, state, stream, dist, device,
                          save_config=steps is not None or time_limit is not None)


def _schedule_change(saved_steps: int, config: TrainConfig, step: int) -> str | None:
    """What a new ``--steps`` does to the schedules laid over the run's steps, at the checkpoint's ``step``
    (the cosine learning rate, a cyclical β), or None when they carry on as they were."""
    if config.steps == saved_steps:
        return None
    before = dataclasses.replace(config, steps=saved_steps)
    changes = []
    old_lr, new_lr = before.learning_rate(step), config.learning_rate(step)
    if not math.isclose(old_lr, new_lr, rel_tol=0.01, abs_tol=1e-12):
        changes.append(f"the learning rate goes from {old_lr:.3g} to {new_lr:.3g}")
    if config.objective == "beta":
        old_beta = config.beta * BetaVAE.schedule_from_config(before)(step)
        new_beta = config.beta * BetaVAE.schedule_from_config(config)(step)
        if not math.isclose(old_beta, new_beta, rel_tol=0.01, abs_tol=1e-9):
            changes.append(f"β goes from {old_beta:.3g} to {new_beta:.3g}")
    if not changes:
        return None
    return (f"betavae: note: the run's schedules are laid over --steps, now {config.steps:,} in place of "
            f"{saved_steps:,}, so at step {step:,} {' and '.join(changes)}: the schedule is laid anew over the "
            "new --steps (for a decayed rate, a warm restart), it does not carry on from where it was.")


def _train(config: TrainConfig, run_dir: Path, dataset: ImageDataset, checkpoint: dict[str, Any] | None,
           stream: TextIO | None, dist: Distributed, device: torch.device, save_config: bool = False) -> Path:
    """Train ``config`` in ``run_dir`` from ``checkpoint`` (None: from step 0); ``save_config`` writes the config
    (a resume's new --steps or --time-limit) once the checkpoint has loaded, so a checkpoint that does not fit
    leaves the run as it was."""
    with torch.random.fork_rng(devices=[]):  # seeded weight init without touching global RNG state
        torch.manual_seed(config.seed)
        model = model_from_spec(model_spec(config.arch, config.latents, dataset.image_shape, config.width))
    if checkpoint is None:  # a resumed run's weights come from its checkpoint
        initialise(model, config, dataset)
    channels_last = is_convolutional(config.arch)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    objective = build_objective(config, len(dataset)).to(device)
    optimizer = make_adam(model.parameters(), config.lr, device)
    member = Member(config, run_dir, objective, torch.Generator(device).manual_seed(config.seed), SilentLog(),
                    reconstruction_baseline(dataset, config.likelihood, config.likelihood_scale,
                                            np.random.default_rng(config.seed)))
    start, trained_before = 0, 0.0  # a resumed run's step and clock go on
    if checkpoint is not None:
        load_module_state(model, checkpoint["model"], run_dir)
        try:
            load_optimizer_state(optimizer, checkpoint["optimizer"])
            objective.load_state_dict(checkpoint["objective"])
            objective.load_auxiliary_state(checkpoint.get("objective_auxiliary"))
            member.generator.set_state(checkpoint["generator"])
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
            raise CheckpointError(f"the checkpoint of step {checkpoint['step']} in {run_dir} does not fit this run "
                                  f"({type(exc).__name__}: {exc}); was it written for another objective?") from exc
        sums = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in checkpoint["log_sums"].items()}
        member.sums = distributed.local_share(sums, dist)
        member.count, member.skipped = checkpoint["log_count"], checkpoint["skipped_steps"]
        start, trained_before = checkpoint["step"], float(checkpoint["elapsed_seconds"])
    if config.time_limit is not None and trained_before >= config.time_limit * 60.0:
        raise ConfigError(f"{run_dir} has trained {trained_before / 60:.1f} minutes, its --time-limit of "
                          f"{config.time_limit:g}; resume it with a larger time limit to train further.")
    if save_config:
        distributed.agree(dist, lambda: config.save(run_dir / CONFIG_FILE), main_only=True)
    # DDP makes every process start from process 0's weights; compiling happens at the first step.
    net = OneModel(model, _compiled(distributed.wrap(TrainingForward(model), dist, device), config.compile), optimizer)
    if dist.is_main:
        damaged = truncate_metrics(run_dir, start)  # records after the checkpoint are written again
        if damaged:
            print(f"betavae: {damaged} line(s) of {run_dir / METRICS_FILE} were no logged record (cut by a kill, or "
                  f"damaged); moved to {run_dir / DAMAGED_METRICS_FILE}", file=stream or sys.stderr)
        member.log = open_log(member, start, stream, len(dataset))
    where = f"{device}" if not dist.enabled else (
        f"{dist.world_size} torchrun processes ({device.type}, {config.batch_size // dist.world_size} images each)")
    member.log.message(start_message(member, dataset, device, where, start))
    spec = model_spec(config.arch, config.latents, dataset.image_shape, config.width)
    try:
        with matmul_arithmetic(config.precision):
            run_steps([member], net, dataset.training_store(device), spec, device, start,
                      time.perf_counter() - trained_before, dist)
    finally:
        member.log.close()
    if member.error is not None:
        raise member.error
    if not dist.is_main:
        return run_dir
    return finish(run_dir, config, model, spec, dataset, objective, member.baseline, member.log)


def initialise(model: VAE, config: TrainConfig, dataset: ImageDataset) -> None:
    """What ``config`` asks of the fresh ``model`` beyond PyTorch's initialisation (``decoder_init``)."""
    if config.decoder_init == "data":
        init_output_bias(model, constant_image(dataset, config.likelihood, np.random.default_rng(config.seed)))


@dataclass
class Member:
    """One model's run in the step loop: its config, directory, objective, random stream and logged terms."""

    config: TrainConfig
    run_dir: Path
    objective: Objective
    generator: torch.Generator  # its batch indices, then its noise, every step
    log: TrainingLog | SilentLog
    baseline: float  # the reconstruction NLL of a decoder that ignores z (for the diagnosis)
    sums: dict[str, Any] = field(default_factory=dict)  # logged terms summed on the device since the last log
    count: int = 0  # steps in ``sums``
    skipped: int = 0  # steps skipped for NaN/inf (--skip-nonfinite)
    interval_start: float = field(default_factory=time.perf_counter)
    interval_steps: int = 0
    error: Exception | None = None  # why it stopped early (NaN loss or weights)


def open_log(member: Member, start: int, stream: TextIO | None, dataset_size: int) -> TrainingLog:
    """The member's training log, watching each record for KL collapse, KL above log N and dims that
    collapse (the live diagnosis)."""
    config, objective = member.config, member.objective
    diagnosis = LiveDiagnosis(objective.weight_label(), config.collapse_threshold, member.baseline, dataset_size,
                              kl_high_advice=objective.kl_high_advice())
    return TrainingLog(member.run_dir, config.steps, start, stream, regulariser_label=objective.regulariser_label,
                       diagnosis=diagnosis)


class OneModel:
    """The network of a single run for :func:`run_steps`: its model, the forward pass (in DDP, compiled,
    as asked) and its Adam. :class:`betavae.training.parallel.Stack` is the same for several models."""

    def __init__(self, model: VAE, forward: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self._forward, self.optimizer = model, forward, optimizer
        model.train()

    def forward(self, xs: list[torch.Tensor], eps: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
        """[(mu, logvar, z, recon)] for the one batch ``xs[0]`` (B, C, H, W) and noise ``eps[0]`` (B, z)."""
        return [self._forward(xs[0], eps[0])]

    def weights(self, row: int) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def optimizer_state(self, row: int) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def finite_rows(self) -> torch.Tensor:
        """(1,) bool: whether every weight is finite (no sync)."""
        return torch.stack([torch.isfinite(p.detach()).all() for p in self.model.parameters()]).all().reshape(1)

    def step_is_finite(self, loss: torch.Tensor | None) -> bool:
        """Whether the loss (if given) and every gradient are finite (one device sync)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        total = sum(g.sum() for g in grads) * 0.0  # NaN/inf anywhere makes this non-finite
        if loss is not None:
            total = loss.detach() + total
        return bool(torch.isfinite(torch.as_tensor(total)))

    def keep(self, rows: list[int]) -> None:
        pass  # a single model that failed ends the loop


#: How the first line of a run names its arithmetic.
PRECISION_LABELS = {"bf16": "bf16 (autocast; loss in fp32)", "tf32": "tf32 (fp32 tensors, TF32 matrix products)",
                    "fp32": "fp32"}


#: Linux's names (``/proc/cpuinfo``) for the bfloat16 instructions that make bf16 autocast fast on a CPU
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), as PyTorch detects them; with a PyTorch
    that does not say, as Linux lists them in ``cpuinfo`` (elsewhere: False). Only on such processors is bf16
    autocast faster than fp32 on the CPU (docs/performance.md)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [check for check in checks if check is not None]
    if checks:
        return any(check() for check in checks)
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return False
    flags = next((line.partition(":")[2].split() for line in lines if line.split(":")[0].strip() == "flags"), [])
    return bool(BFLOAT16_CPU_FLAGS.intersection(flags))


def precision_hint(precision: str, device: torch.device) -> str:
    """Advice for the run's first line: ``auto`` keeps fp32 on a CPU even where bf16 would be faster."""
    if precision != "auto" or device.type != "cpu" or not cpu_has_bfloat16():
        return ""
    return (" (this CPU has bfloat16 instructions: --precision bf16 trains faster here, dlib-factor 1.5 times as"
            " fast; docs/performance.md)")


def start_message(member: Member, dataset: ImageDataset, device: torch.device, where: str, start: int) -> str:
    """The line a run starts with: what trains on what, where, how, and for how long."""
    c = member.config
    return (f"betavae: training {c.objective} ({member.objective.weight_label()}) on "
            f"{getattr(dataset, 'name', 'data')} ({len(dataset)} images {tuple(dataset.image_shape)}) with {c.arch}"
            f"{'' if c.width is None else f' (width {c.width})'}, {c.latents} latents, on {where}, precision "
            f"{PRECISION_LABELS[arithmetic(c.precision, device)]}{precision_hint(c.precision, device)}, "
            f"compile {c.compile}; steps {start}..{c.steps}"
            f"{'' if c.time_limit is None else f' or {c.time_limit:g} minutes of training'}; run directory {member.run_dir}")


def run_steps(members: list[Member], net: Any, store: Any, spec: dict[str, Any], device: torch.device, start: int,
              started: float, dist: Distributed = distributed.SINGLE) -> None:
    """The training loop, from step ``start``: for one model (``net`` a :class:`OneModel`), or for several
    trained together as one batched computation (``net`` a ``parallel.Stack``), which share the config
    fields that shape a step (``parallel.SHARED_FIELDS``). Each member draws its own batch and noise,
    is scored by its own objective, logs and checkpoints as its config says; one whose loss or weights
    turn NaN/inf leaves with its ``error`` set while the others go on. ``spec`` describes their network,
    ``store`` holds the training images on ``device``; ``started`` is the ``time.perf_counter()`` the time
    limit counts from.
    """
    config = members[0].config  # the shared fields
    autocast_dtype = resolve_precision(config.precision, device)
    autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    for member in members:
        member.objective.autocast_dtype = autocast_dtype  # an objective's own network runs as the model does
    channels_last = is_convolutional(config.arch)
    local = dist.local_slice(config.batch_size)  # this process's rows of every global batch
    time_limit = None if config.time_limit is None else config.time_limit * 60.0
    together = len(members) > 1
    active = list(members)
    for member in active:
        member.interval_start, member.interval_steps = time.perf_counter(), 0
    for step in range(start, config.steps):
        xs, noise = [], []
        for member in active:  # the global batch and noise, drawn as a single process draws them; this process's rows
            indices = torch.randint(len(store), (config.batch_size,), device=device, generator=member.generator)
            eps = torch.randn((config.batch_size, config.latents), generator=member.generator, device=device)
            x = store.batch(indices[local])  # (B, C, H, W) float32 in [0, 1]
            xs.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
            noise.append(eps[local])
        if config.compile == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        with autocast():
            outputs = net.forward(xs, noise)
        total, scored = None, []
        for member, x, (mu, logvar, z, recon) in zip(active, xs, outputs):
            output = VAEOutput(mu=mu, logvar=logvar, z=z, recon=recon)
            loss, logs = member.objective(output, x, step)
            scored.append((output, logs))
            total = loss if total is None else total + loss  # d(total)/d(a member's weights) = its own gradient
        net.optimizer.zero_grad(set_to_none=True)
        total.backward()
        # Under DDP the gradients, averaged over the processes, are the same on every process, so
        # every process decides alike; a process's own loss is left out of that decision.
        if config.skip_nonfinite and not net.step_is_finite(None if dist.enabled else total):
            member = active[0]  # (models trained together take every step: skip_nonfinite is 0 for them)
            member.skipped += 1
            if member.skipped <= config.skip_nonfinite:
                member.log.message(f"betavae: step {step + 1}: loss or gradients are NaN/inf; step skipped "
                                   f"({member.skipped} of at most {config.skip_nonfinite})")
            else:
                raise TrainingError(
                    f"more than {config.skip_nonfinite} steps had NaN/inf loss or gradients (--skip-nonfinite); "
                    f"lower --lr (now {config.lr:g}) or β and train again."
                )
            net.optimizer.zero_grad(set_to_none=True)
        else:
            for group in net.optimizer.param_groups:
                group["lr"] = config.learning_rate(step)
            net.optimizer.step()
            for member, x, (output, logs) in zip(active, xs, scored):
                logs.update(member.objective.update_auxiliary(output, x, step))
                for key, value in logs.items():  # summed on the device: no sync here
                    value = value.detach() if isinstance(value, torch.Tensor) else value
                    member.sums[key] = member.sums[key] + value if key in member.sums else value
                member.count += 1
        for member in active:
            member.log.advance()
            member.interval_steps += 1
        done = step + 1
        # The time limit is checked every step on one process, on logging steps under torchrun
        # (where process 0's clock decides for all).
        out_of_time = time_limit is not None and (not dist.enabled or done % config.log_every == 0) and \
            _out_of_time(time.perf_counter() - started >= time_limit, dist)
        last = done == config.steps or out_of_time
        due = [(row, m) for row, m in enumerate(active)
               if last or done % m.config.log_every == 0 or done % m.config.checkpoint_every == 0]
        if not due:
            continue
        shared, failed = _check_finite(due, net, done, dist, together)
        for row, member in due:
            if row in failed:
                continue
            c = member.config
            if (last or done % c.log_every == 0) and member.count:  # (every step of the interval may have been skipped)
                now = time.perf_counter()
                speed = member.interval_steps * c.batch_size / (now - member.interval_start)  # the global batch
                member.log.write(log_record(shared[row], member.count, done, c, speed, now - started))
                member.sums, shared[row], member.count, member.interval_start, member.interval_steps = {}, {}, 0, now, 0
            if (last or done % c.checkpoint_every == 0) and dist.is_main:
                save_checkpoint(member.run_dir, done, {
                    "step": done,
                    "model_spec": spec,
                    "model": net.weights(row),
                    "optimizer": net.optimizer_state(row),
                    "objective": member.objective.state_dict(),
                    "objective_auxiliary": member.objective.auxiliary_state(),
                    "generator": member.generator.get_state(),
                    "log_sums": shared[row],
                    "log_count": member.count,
                    "skipped_steps": member.skipped,
                    "elapsed_seconds": time.perf_counter() - started,
                    **rundir.config_record(c),
                }, keep=c.keep_checkpoints)
            if out_of_time:
                member.log.message(f"betavae: stopped at step {done} of {c.steps}: the time limit of "
                                   f"{c.time_limit:g} minutes of training is reached")
        if failed:  # they leave; the others go on with their weights and Adam state unchanged
            keep = [row for row in range(len(active)) if row not in failed]
            active = [active[row] for row in keep]
            if not active:
                return
            net.keep(keep)
        if out_of_time:
            return


def _check_finite(due: list[tuple[int, Member]], net: Any, step: int, dist: Distributed,
                  together: bool) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """Each due member's logged sums as means over the processes (one all-reduce each under torchrun, so
    every process sees the same numbers and stops alike on NaN), and the rows whose logged loss or weights
    are NaN/inf (one device sync); each of those gets its ``error``."""
    shared = {row: distributed.mean_over_processes(m.sums, dist) for row, m in due}
    weights_ok = net.finite_rows()
    loss_ok = [torch.isfinite(torch.as_tensor(shared[row]["loss"], dtype=torch.float32, device=weights_ok.device)).all()
               if "loss" in shared[row] else torch.ones((), dtype=torch.bool, device=weights_ok.device) for row, _ in due]
    ok = (weights_ok[[row for row, _ in due]] & torch.stack(loss_ok)).tolist()
    failed = set()
    for (row, member), fine in zip(due, ok):
        if fine:
            continue
        c = member.config
        checkpoints = list_checkpoints(member.run_dir)
        kept = (f"The last good checkpoint, {checkpoints[-1]}, is kept." if checkpoints
                else "No checkpoint had been written yet.")
        member.error = TrainingError(
            f"the loss or the weights became NaN or infinite by step {step}. Likely causes: a learning rate too high "
            f"(--lr {c.lr:g}){' or' if c.likelihood == 'bernoulli' else ','} a very large regularisation weight "
            f"({member.objective.weight_label()})"
            + ("" if c.likelihood == "bernoulli"  # the Bernoulli likelihood has no scale
               else f", or a likelihood scale too small (--likelihood-scale {c.likelihood_scale:g})")
            + f". {kept} Lower --lr and train again, or "
            + ("train this model alone with --skip-nonfinite N" if together else "pass --skip-nonfinite N")
            + " to skip a few bad steps."
        )
        if together:  # a single run's error is the caller's to raise
            member.log.message(f"betavae: error: {member.error}")
        failed.add(row)
    return shared, failed


def finish(run_dir: Path, config: TrainConfig, model: VAE, spec: dict[str, Any], dataset: ImageDataset,
           objective: Objective, baseline: float, log: TrainingLog) -> Path:
    """After the last step (the newest checkpoint's): diagnosis, figures and report, then the final weights.

    The model file comes last, saying its step: a run whose model is of its newest checkpoint is
    finished, and a run stopped before (a full disk while drawing figures) resumes from that
    checkpoint to finish.
    """
    step = rundir.checkpoint_step(list_checkpoints(run_dir)[-1])
    history = read_metrics(run_dir)
    if not history:
        raise TrainingError(f"no training step of {run_dir} succeeded, so there is nothing to diagnose; lower --lr.")
    diagnosis = diagnose_run(history, objective.weight_label(), config.collapse_threshold, baseline, len(dataset),
                             objective.kl_high_advice())
    write_json_atomic(run_dir / DIAGNOSIS_FILE, diagnosis)
    log.message("betavae: diagnosis\n" + format_diagnosis(diagnosis))
    if config.figures:
        # Imported here: the report package (matplotlib) is loaded only by a run that draws, and it reads
        # run directories through this package, so a module-level import would be circular.
        from betavae.report import run_report
        from betavae.report.figures import make_figures

        figures = make_figures(run_dir, model.eval(), dataset, history, diagnosis, seed=config.seed)
        log.message(f"betavae: figures in {figures}")
        log.message(f"betavae: report in {run_report(run_dir, model, dataset, seed=config.seed)}")
    save_model(run_dir / MODEL_FILE, model, spec, step)
    log.message(f"betavae: done; model, logs and figures are in {run_dir}")
    return run_dir


def _out_of_time(mine: bool, dist: Distributed) -> bool:
    """Whether to stop for the time limit; under torchrun, process 0's answer for every process."""
    if not dist.enabled:
        return mine
    decision = [mine]
    torch.distributed.broadcast_object_list(decision, src=0)
    return bool(decision[0])


def log_record(sums: dict[str, Any], count: int, step: int, config: TrainConfig, images_per_second: float,
               elapsed: float) -> dict[str, Any]:
    """The metrics.jsonl record of a logging step: every logged term averaged over the interval."""
    record: dict[str, Any] = {"step": step}
    for key, total in sums.items():
        mean = total / count
        record[key] = mean.tolist() if isinstance(mean, torch.Tensor) and mean.ndim else float(mean)
    record["active_dims"] = sum(v >= config.collapse_threshold for v in record["kl_per_dim"])
    record["lr"] = config.learning_rate(step - 1)  # of the interval's last update
    record["images_per_second"] = images_per_second
    record["elapsed_seconds"] = elapsed
    return record


def save_model(path: Path, model: VAE, model_spec: dict[str, Any], step: int | None = None) -> None:
    """Final weights as safetensors, the model's architecture (and the step it reached) in the file's metadata."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"betavae_model": json.dumps(model_spec)} | ({} if step is None else {"betavae_step": str(step)})
    write_bytes_atomic(path, save(state, metadata=metadata))


def model_step(path: Path) -> int | None:
    """The training step a model file was saved at; None when it does not say (written before it did)."""
    try:
        with safe_open(str(path), "pt") as f:
            return int((f.metadata() or {})["betavae_step"])
    except (KeyError, ValueError, OSError, SafetensorError):
        return None


def behind_checkpoint(run_dir: Path) -> tuple[int, int] | None:
    """``(model step, newest checkpoint step)`` when the run's final model is older than its newest checkpoint
    (a resume stopped before it finished, so the model is not what training reached); None when the model is
    of that step or later, or when there is no checkpoint or the model file does not say its step."""
    step = model_step(Path(run_dir) / MODEL_FILE)
    checkpoints = list_checkpoints(Path(run_dir))
    if step is None or not checkpoints or rundir.checkpoint_step(checkpoints[-1]) <= step:
        return None
    return step, rundir.checkpoint_step(checkpoints[-1])


def behind_checkpoint_note(run_dir: Path, behind: tuple[int, int] | None = None) -> str | None:
    """:func:`behind_checkpoint` (or ``behind``, when already known) in words, with the way to finish the run;
    None when the model is current."""
    behind = behind or behind_checkpoint(run_dir)
    if behind is None:
        return None
    return (f"{run_dir}'s model.safetensors is of step {behind[0]:,}, but training went on to a checkpoint of step "
            f"{behind[1]:,} (a resume stopped before it finished): this uses the step-{behind[0]:,} model; "
            f"'betavae train --resume {run_dir}' finishes the run.")


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
        model = model_from_spec(spec)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} lacks a valid betavae model description ({exc}); it was not written by betavae.") from exc
    load_module_state(model, tensors, path)
    return model.to(device).eval()
