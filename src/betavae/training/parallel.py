"""Many models at once: K models of one architecture trained in one process as one batched computation.

Tuning β means training many models that differ only in their objective's weights and their seed.
Each is small; trained together, each layer runs as one kernel K times larger (a convolution
becomes one grouped convolution, a linear layer one batched matrix product). The members'
parameters are stacked along a leading model axis (``torch.func.stack_module_state``) and the
training forward pass runs once per step under ``torch.vmap`` over that axis
(``torch.func.functional_call``).

The step loop is the training loop's own (:func:`betavae.training.loop.run_steps`); this module
holds what differs: the checks that configs can train together and :class:`Stack`, the stacked
network. Every member is the model ``betavae.train`` would train from its config, up to float
reassociation:

* weights are initialised as the training loop does (the model its spec describes, under its seed);
* each member has its own generator, seeded like the loop's, from which it draws its batch indices
  and then its reparameterisation noise, in the loop's order, so its batches and noise are the ones
  it would see alone (the noise is drawn outside ``vmap`` and given to the network);
* each member's own objective (its weights, schedule, auxiliary networks) scores its slice of the
  stacked outputs; the loss minimised is the sum over members, whose gradient with respect to a
  member's parameters is that member's own gradient;
* one Adam steps the stacked parameters: Adam is elementwise, so this is K separate Adams with the
  same learning rate.

Every member writes an ordinary run directory, exactly like ``betavae.train``: config, metrics,
checkpoints in the standard format (with the member's own slice of the Adam state, so
``betavae train --resume RUN`` continues any member alone), final model, diagnosis and figures.
A member whose loss or weights become NaN stops with the loop's message while the others go on.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np
import torch
from torch.func import functional_call, stack_module_state

from betavae.data import ImageDataset, dataset_from_config
from betavae.errors import ConfigError, TrainingError
from betavae.models import VAE, is_convolutional, model_from_spec, model_spec
from betavae.models.architectures import check_image_shape
from betavae.objectives import build_objective
from betavae.training.config import TrainConfig
from betavae.training.diagnostics import reconstruction_baseline
from betavae.training.logging import truncate_metrics
from betavae.training import distributed, rundir
from betavae.training.loop import (Member, SilentLog, TrainingForward, check_precision, finish, initialise,
                                   load_optimizer_state, make_adam, matmul_arithmetic, open_log, resolve_device, run_steps,
                                   start_message, with_denormals_flushed)

#: Config fields every member of a group must share: they fix the network, the data, the batch
#: shape, the one optimizer and when the group stops. Everything else (objective and its weights, likelihood, seed,
#: logging and checkpoint intervals, figures, out) may differ from member to member.
SHARED_FIELDS = ("dataset", "data", "image_size", "factors", "allow_subset", "skip_bad", "arch", "width", "latents",
                 "batch_size", "lr", "lr_schedule", "lr_decay_fraction", "lr_warmup_steps", "steps", "time_limit", "device",
                 "precision")


def check_group(configs: Sequence[TrainConfig]) -> None:
    """Raise :class:`ConfigError` unless ``configs`` can be trained together (each one valid)."""
    if not configs:
        raise ConfigError("no configs to train: give train_many at least one TrainConfig.")
    for i, config in enumerate(configs):
        if not isinstance(config, TrainConfig):
            raise ConfigError(f"train_many takes TrainConfig objects, got {type(config).__name__}.")
        try:
            config.validate()
        except ConfigError as exc:
            raise ConfigError(f"config {i} ({config.run_dir()}): {exc}") from None
    for name in SHARED_FIELDS:
        values = [getattr(c, name) for c in configs]
        if any(v != values[0] for v in values):
            shown = ", ".join(sorted({repr(v) for v in values}))
            raise ConfigError(
                f"models trained together must share {name}, got {shown}. Only the objective, its weights, the "
                f"likelihood, the seed and the output settings may differ; train one group per {name}."
            )
    for config in configs:
        if config.compile != "off":
            raise ConfigError(
                f"compile {config.compile!r} compiles one model's forward pass; models trained together run their "
                "batched forward pass uncompiled. Set compile to off, or train this model alone with betavae.train."
            )
        if config.skip_nonfinite:
            raise ConfigError(
                f"skip_nonfinite ({config.skip_nonfinite}) skips one model's bad step, but models trained together "
                "take every step as one; set skip_nonfinite to 0 or train this model alone with betavae.train."
            )
    seen: dict[Path, int] = {}
    for i, config in enumerate(configs):
        path = config.run_dir().resolve()
        if path in seen:
            raise ConfigError(f"configs {seen[path]} and {i} both write to {config.run_dir()}; give each model its "
                              "own --out.")
        seen[path] = i


@with_denormals_flushed
def train_many(configs: Sequence[TrainConfig], stream: TextIO | None = None) -> list[Path]:
    """Train every config's model together in one batched computation; their run directories, in order.

    The configs must share :data:`SHARED_FIELDS`; see :func:`check_group`. Each model's progress
    lines go to ``stream`` (default stderr) prefixed with its run directory's name. A model that
    fails (NaN loss) stops alone; the others finish, then :class:`TrainingError` names the failures.
    """
    stream = stream or sys.stderr
    configs = list(configs)
    streams = [_Prefixed(stream, f"[{c.run_dir().name}] ") if len(configs) > 1 else stream for c in configs]
    outcomes = train_group(configs, streams)
    failed = [(c, o) for c, o in zip(configs, outcomes) if isinstance(o, BaseException)]
    if failed:
        done = [str(o) for o in outcomes if isinstance(o, Path)]
        details = "; ".join(f"{c.run_dir()}: {o}" for c, o in failed)
        raise TrainingError(f"{len(failed)} of {len(configs)} models failed: {details}"
                            + (f" The others finished: {', '.join(done)}." if done else ""))
    return [o for o in outcomes if isinstance(o, Path)]


def train_group(configs: Sequence[TrainConfig], streams: Sequence[TextIO]) -> list[Path | Exception]:
    """Train ``configs`` together; per config its run directory or the error that stopped it.

    Problems found before training (a bad or incompatible config, unreadable data, a run directory
    that may not be written) raise at once, before any directory is made. ``streams[i]`` receives
    model i's log lines.
    """
    configs = list(configs)
    if len(streams) != len(configs):
        raise ConfigError(f"{len(configs)} configs but {len(streams)} log streams; give one stream per config.")
    check_group(configs)
    configs = [config.with_absolute_paths() for config in configs]  # as train() saves them
    if distributed.from_environment().enabled:
        raise ConfigError("models trained together run in one process; start train_many (or betavae sweep --parallel) "
                          "without torchrun.")
    check_precision(configs[0].precision, resolve_device(configs[0].device))
    dataset = dataset_from_config(configs[0])  # bad data is reported before any run directory is made
    check_image_shape(configs[0].arch, dataset.image_shape)
    if configs[0].batch_size > len(dataset):
        raise ConfigError(f"batch size {configs[0].batch_size} exceeds the {len(dataset)} images of the dataset; "
                          "lower --batch-size.")
    for config in configs:
        rundir.check_new(config)
    with contextlib.ExitStack() as held:  # every member's lock, held until the group is done
        run_dirs = [held.enter_context(rundir.create(config)).run_dir for config in configs]
        try:
            return _train_together(configs, run_dirs, dataset, list(streams))
        except OSError as exc:  # a full disk while training: the message names the run it hit
            failed = Path(exc.filename or run_dirs[0]).resolve()
            raise rundir.write_error(exc, next((d for d in run_dirs if failed.is_relative_to(d.resolve())),
                                               run_dirs[0])) from exc


class Stack:
    """The network of several models trained together, for :func:`betavae.training.loop.run_steps`: their
    parameters stacked on a leading model axis, the training forward pass under vmap, one Adam."""

    def __init__(self, models: list[VAE], lr: float):
        self.params, self.buffers = stack_module_state(models)
        self.models = [model.to("cpu") for model in models]  # each member's weights copied here for its checkpoints
        # the training loop's forward pass (noise given, outputs in fp32); its tensors come stacked
        self.net = TrainingForward(copy.deepcopy(models[0]).to("meta"))
        self.optimizer = make_adam(list(self.params.values()), lr, next(iter(self.params.values())).device)
        self._batched = torch.vmap(self._one)

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
             eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tensors = {f"vae.{k}": v for k, v in params.items()} | {f"vae.{k}": v for k, v in buffers.items()}
        return functional_call(self.net, tensors, (x, eps))

    def forward(self, xs: list[torch.Tensor], eps: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
        """Per member (mu, logvar, z, recon) for its batch ``xs[k]`` (B, C, H, W) and noise ``eps[k]`` (B, z)."""
        outputs = self._batched(self.params, self.buffers, torch.stack(xs), torch.stack(eps))  # each (K, B, ...)
        return [tuple(t[row] for t in outputs) for row in range(len(xs))]

    def copy_into(self, row: int, model: VAE) -> VAE:
        """Member ``row``'s current weights, written into ``model`` (for its state dict and figures)."""
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.params[name][row])
            for name, b in model.named_buffers():
                b.copy_(self.buffers[name][row])
        return model

    def weights(self, row: int) -> dict[str, torch.Tensor]:
        """Member ``row``'s state dict, as its model alone would hold it."""
        return self.copy_into(row, self.models[row]).state_dict()

    def optimizer_state(self, row: int) -> dict[str, Any]:
        """Member ``row``'s Adam state dict, as ``torch.optim.Adam(model.parameters())`` would hold it."""
        state = self.optimizer.state_dict()
        return {"state": {i: {k: _row(v, row) for k, v in s.items()} for i, s in state["state"].items()},
                "param_groups": copy.deepcopy(state["param_groups"])}

    def finite_rows(self) -> torch.Tensor:
        """(K,) bool: whether every weight of each member is finite (no sync)."""
        rows = [torch.isfinite(p.detach().flatten(1)).all(1) for p in self.params.values()]
        return torch.stack(rows).all(0)

    def keep(self, rows: list[int]) -> None:
        """Drop every member but ``rows`` (their weights and Adam state carry over unchanged)."""
        old = self.optimizer.state_dict()
        index = torch.tensor(rows, device=next(iter(self.params.values())).device)
        self.params = {k: v.detach().index_select(0, index).requires_grad_(True) for k, v in self.params.items()}
        self.buffers = {k: v.index_select(0, index) for k, v in self.buffers.items()}
        self.models = [self.models[row] for row in rows]
        self.optimizer = make_adam(list(self.params.values()), old["param_groups"][0]["lr"], index.device)
        load_optimizer_state(self.optimizer, {
            "state": {i: {k: v.index_select(0, index.to(v.device)) if v.ndim else v.clone() for k, v in s.items()}
                      for i, s in old["state"].items()},
            "param_groups": old["param_groups"],
        })


def _row(value: Any, row: int) -> Any:
    """Member ``row``'s part of a stacked optimizer state value (scalars such as Adam's step are shared)."""
    if isinstance(value, torch.Tensor):
        return value[row].clone() if value.ndim else value.clone()
    return copy.deepcopy(value)


def _train_together(configs: list[TrainConfig], run_dirs: list[Path], dataset: ImageDataset,
                    streams: list[TextIO]) -> list[Path | Exception]:
    device = resolve_device(configs[0].device)
    first = configs[0]
    channels_last = is_convolutional(first.arch)
    spec = model_spec(first.arch, first.latents, dataset.image_shape, first.width)
    members: list[Member] = []
    models: list[VAE] = []
    try:
        for config, run_dir, stream in zip(configs, run_dirs, streams):
            with torch.random.fork_rng(devices=[]):  # the weights betavae.train would start from
                torch.manual_seed(config.seed)
                model = model_from_spec(spec)
            initialise(model, config, dataset)
            models.append(model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format))
            objective = build_objective(config, len(dataset)).to(device)
            truncate_metrics(run_dir, 0)
            members.append(Member(config, run_dir, objective, torch.Generator(device).manual_seed(config.seed), SilentLog(),
                                  reconstruction_baseline(dataset, config.likelihood, config.likelihood_scale,
                                                          np.random.default_rng(config.seed))))
            members[-1].log = log = open_log(members[-1], 0, stream, len(dataset))
            log.message(start_message(members[-1], dataset, device,
                                      f"{device} as one of {len(configs)} models trained together", 0))
        stack = Stack(models, first.lr)
        with matmul_arithmetic(first.precision):
            run_steps(members, stack, dataset.training_store(device), spec, device, 0, time.perf_counter())
    finally:
        for member in members:
            member.log.close()
    outcomes: list[Path | Exception] = []
    row = 0
    for member in members:
        if member.error is not None:
            outcomes.append(member.error)
            continue
        model = stack.copy_into(row, stack.models[row]).to(device)  # final weights, where betavae.train leaves them
        row += 1
        try:
            with rundir.explaining_write_errors(member.run_dir):
                outcomes.append(finish(member.run_dir, member.config, model, spec, dataset,
                                       member.objective, member.baseline, member.log))
        except Exception as exc:  # noqa: BLE001 - one model's failed figures do not undo the others
            outcomes.append(exc)
    return outcomes


class _Prefixed(io.TextIOBase):
    """A text stream that starts every line written to it with ``prefix`` (one model's lines among many)."""

    def __init__(self, stream: TextIO, prefix: str):
        super().__init__()
        self._stream, self._prefix, self._line_start = stream, prefix, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._line_start:
                out.append(self._prefix)
            out.append(piece)
            self._line_start = piece.endswith("\n")
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False  # plain lines: one progress bar per model would overwrite each other

    def writable(self) -> bool:
        return True
