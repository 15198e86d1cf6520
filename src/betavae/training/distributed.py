"""Data-parallel training on PyTorch's own engine: ``torchrun --nproc-per-node N -m betavae train ...``.

torchrun starts N processes and tells each its place in ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``.
Each process trains a copy of the model wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`
(NCCL on CUDA, each process on ``cuda:LOCAL_RANK``; gloo on the CPU), which averages the gradients
of the processes after every backward pass.

The result matches a single process with the same global batch: every process draws the *global*
batch indices and reparameterisation noise from the same seeded generator, exactly as a single
process does, and keeps its own contiguous slice of ``batch_size / world_size`` images. The
objective averages over the local batch and DDP averages over the processes, so the gradient is
the single-process gradient up to float reassociation for objectives that are means of per-image
terms (``beta``). Objectives with batch-level terms (``capacity``'s ``|KL − C|`` of the batch KL,
``dip1``/``dip2``'s batch covariance, ``tc``'s minibatch estimate of ``log q(z)``) compute them on
each process's local batch; ``factor``, whose discriminator has its own optimizer that DDP does not
synchronise, is refused.

Only process 0 writes the run directory. Setup steps that can fail are run so that every process
learns of a failure and stops with the same message (no process is left waiting in a collective).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

from betavae import errors
from betavae.errors import BetaVAEError, ConfigError, TrainingError
from betavae.objectives import OBJECTIVES

T = TypeVar("T")

_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (``world_size`` 1: a single process)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, batch_size: int) -> slice:
        """This process's contiguous share of a global batch of ``batch_size``."""
        local = batch_size // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)

SINGLE = Distributed()


def from_environment(environ: dict[str, str] | None = None) -> Distributed:
    """The process's place as torchrun's environment gives it; a single process without it."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return SINGLE
    missing = [name for name in _ENV if name not in environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not; start data-parallel training with "
                          "'torchrun --nproc-per-node N -m betavae train ...', or unset WORLD_SIZE for one process.")
    try:
        world_size, rank, local_rank = (int(environ[name]) for name in _ENV)
    except ValueError:
        raise ConfigError(f"torchrun's WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers, got "
                          f"{', '.join(environ[name] for name in _ENV)}.") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"inconsistent torchrun environment: WORLD_SIZE {world_size}, RANK {rank}, "
                          f"LOCAL_RANK {local_rank}; start the run with torchrun.")
    if world_size > 1 and not torch.distributed.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; train in one process (without torchrun).")
    return Distributed(world_size, rank, local_rank)


def device_for(name: str, dist: Distributed) -> torch.device:
    """The training device of this process: ``cuda:LOCAL_RANK`` under torchrun on CUDA."""
    if not dist.enabled:
        return _single_device(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise ConfigError(f"--device {name} names one GPU, but torchrun started {dist.world_size} processes; use "
                          "--device cuda (or auto) so that each process trains on cuda:LOCAL_RANK.")
    if not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but CUDA is not available here; use --device cpu or auto.")
    if dist.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"process {dist.rank} has LOCAL_RANK {dist.local_rank}, but only {torch.cuda.device_count()} "
                          "CUDA device(s) are visible; start at most that many processes per node (--nproc-per-node).")
    return torch.device("cuda", dist.local_rank)


def _single_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' was asked for, but CUDA is not available here; use --device cpu or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) found.")
    return device


def check_config(config: Any, dist: Distributed) -> None:
    """Refuse what data-parallel training cannot do as a single process would (before any process group)."""
    if not dist.enabled:
        return
    if config.batch_size % dist.world_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is not divisible by the {dist.world_size} torchrun processes; every "
            f"process takes an equal share of the global batch. Use a multiple of {dist.world_size} (e.g. "
            f"{max(dist.world_size, config.batch_size // dist.world_size * dist.world_size)}) or another --nproc-per-node."
        )
    objective = OBJECTIVES[config.objective]
    local = config.batch_size // dist.world_size
    if local < objective.min_batch_size:
        raise ConfigError(
            f"objective {config.objective} estimates batch statistics on each process's share of the batch and needs "
            f"at least {objective.min_batch_size} images per process, but --batch-size {config.batch_size} over "
            f"{dist.world_size} processes gives {local}; raise --batch-size to at least "
            f"{objective.min_batch_size * dist.world_size}."
        )
    if not objective.data_parallel:
        raise ConfigError(
            f"objective {config.objective} trains its own network with its own optimizer after each step, and "
            "DistributedDataParallel would not keep that network the same across the torchrun processes; train "
            f"--objective {config.objective} in one process ('betavae train ...' without torchrun)."
        )


@contextmanager
def process_group(dist: Distributed, device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the duration (NCCL on CUDA, gloo on the CPU); leave it after.

    A group that the caller had already set up is used as it is and left alone.

    Leaving the group must free it, so that its gloo worker threads are joined before the interpreter
    exits. ``torch.distributed.nn.functional`` binds ``group.WORLD`` as a default argument of its
    functions when it is first imported, and the first Adam (through ``torch._dynamo``) and
    DistributedDataParallel import it. Imported while the group exists, it would hold that group to
    the end, and a worker thread still freeing the last collective's tensors as Python shuts down
    would abort the process ("terminate called without an active exception") after a run that
    finished well. So it is imported here first, while ``group.WORLD`` is still None.
    """
    if not dist.enabled:
        yield
        return
    import torch.distributed as td
    import torch.distributed.nn as _functions  # noqa: F401  (before the group exists: see above)

    owned = not td.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            td.init_process_group("nccl", device_id=device)
        else:
            td.init_process_group("gloo")
    elif td.get_world_size() != dist.world_size:
        raise ConfigError(f"the process group in use has {td.get_world_size()} processes but WORLD_SIZE says "
                          f"{dist.world_size}; start the run with torchrun only.")
    try:
        yield
    finally:
        if owned and td.is_initialized():
            td.destroy_process_group()


def agree(dist: Distributed, action: Callable[[], T], *, main_only: bool = False, main_first: bool = False) -> T:
    """Run ``action`` on every process, on process 0 only, or on process 0 first and then the others.

    Every process learns whether ``action`` failed anywhere: a failure raises the same error, with
    the same message, on every process, so none is left waiting for the others. With ``main_only``
    the other processes get process 0's result (it must pickle); ``main_first`` lets process 0 fill a
    cache before the others read it.
    """
    if not dist.enabled:
        return action()
    if main_only:
        result, failure = _attempt(action) if dist.is_main else (None, None)
        shared = _gather((_describe(failure), result))
        _raise_first([f for f, _ in shared], failure)
        return shared[0][1]
    result, failure = None, None
    if main_first:
        if dist.is_main:
            result, failure = _attempt(action)
        _raise_first(_gather(_describe(failure)), failure)
        if dist.is_main:
            _raise_first(_gather(None), None)  # the others' turn
            return result  # type: ignore[return-value]
    result, failure = _attempt(action)
    _raise_first(_gather(_describe(failure)), failure)
    return result  # type: ignore[return-value]


def _attempt(action: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return action(), None
    except Exception as exc:  # every process must hear of it, whatever it is
        return None, exc


def _describe(failure: Exception | None) -> tuple[str, str] | None:
    if failure is None:
        return None
    if isinstance(failure, BetaVAEError):
        return type(failure).__name__, str(failure)
    return "", f"{type(failure).__name__}: {failure}"


def _gather(value: Any) -> list[Any]:
    import torch.distributed as td

    shared: list[Any] = [None] * td.get_world_size()
    td.all_gather_object(shared, value)
    return shared


def _raise_first(failures: list[tuple[str, str] | None], own: Exception | None) -> None:
    """Raise this process's own failure, else the first process's failure rebuilt from its description."""
    if own is not None:
        raise own
    for rank, failure in enumerate(failures):
        if failure is None:
            continue
        kind, message = failure
        cls = getattr(errors, kind, None) if kind else None
        if isinstance(cls, type) and issubclass(cls, BetaVAEError):
            raise cls(message)
        raise TrainingError(f"torchrun process {rank} failed: {message}")


def wrap(forward: nn.Module, dist: Distributed, device: torch.device) -> nn.Module:
    """``forward`` in DistributedDataParallel (gradients averaged over the processes), or as it is."""
    if not dist.enabled:
        return forward
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(forward, device_ids=device_ids)


def mean_over_processes(sums: dict[str, Any], dist: Distributed) -> dict[str, Any]:
    """Tensor entries averaged over the processes (one all-reduce); Python numbers, equal everywhere, kept.

    Each process's sums are of means over its local batch; their average over processes is the mean
    over the global batch, as a single process logs it.
    """
    keys = [k for k, v in sums.items() if isinstance(v, torch.Tensor)]
    if not dist.enabled or not keys:
        return dict(sums)
    import torch.distributed as td

    flat = torch.cat([sums[k].detach().reshape(-1).float() for k in keys])
    td.all_reduce(flat)
    flat /= dist.world_size
    out = dict(sums)
    offset = 0
    for key in keys:
        n = sums[key].numel()
        out[key] = flat[offset:offset + n].reshape(sums[key].shape).to(sums[key].dtype)
        offset += n
    return out


def local_share(sums: dict[str, Any], dist: Distributed) -> dict[str, Any]:
    """Checkpointed (global-mean) log sums as this process's share, so :func:`mean_over_processes` restores them."""
    if not dist.enabled:
        return sums
    return {k: (v * dist.world_size if dist.is_main else torch.zeros_like(v)) if isinstance(v, torch.Tensor) else v
            for k, v in sums.items()}
