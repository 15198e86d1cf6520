"""Checkpoints: tensors in safetensors, everything else in JSON, so loading never unpickles.

A checkpoint is a directory ``RUN/checkpoints/step-NNNNNNNN/`` holding ``tensors.safetensors`` and
``state.json``. It is written under a temporary name and renamed into place, so a kill during a
write leaves the previous checkpoints intact; the newest ``keep`` are kept.

Nested states (optimizer state dicts, RNG states, objective states) are flattened: every tensor
goes to the safetensors file under a path-like key and is replaced in the JSON skeleton by a
reference to that key.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from betavae.errors import CheckpointError, TrainingError
from betavae.files import fsync_dir, write_bytes_atomic, write_json_atomic
from betavae.training.rundir import CHECKPOINT_DIR, STATE_FILE, TENSORS_FILE, list_checkpoints

FORMAT_VERSION = 1


def flatten_state(value: Any, tensors: dict[str, torch.Tensor], prefix: str = "s") -> Any:
    """A JSON-able skeleton of ``value``; its tensors are moved into ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__dict__": [[k, flatten_state(v, tensors, f"{prefix}.{k}")] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`; :class:`CheckpointError` for a skeleton it did not write."""
    try:
        return _unflatten(skeleton, tensors)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a damaged or hand-edited state.json
        raise CheckpointError(f"checkpoint state has a malformed entry ({type(exc).__name__}: {exc}).") from exc


def _unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            key = skeleton["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"checkpoint refers to tensor '{key}', which its tensor file lacks.")
            return tensors[key]
        if "__dict__" in skeleton:
            return {k: _unflatten(v, tensors) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(_unflatten(v, tensors) for v in skeleton["__tuple__"])
        raise CheckpointError("checkpoint state has an object of unknown form.")
    if isinstance(skeleton, list):
        return [_unflatten(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as the checkpoint for ``step`` atomically; prune all but the newest ``keep``."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        root.mkdir(parents=True)
        fsync_dir(root.parent)
    final = root / f"step-{step:08d}"
    for stale in root.glob(".tmp-step-*"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    tmp.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, tensors)
    try:
        write_bytes_atomic(tmp / TENSORS_FILE, save(tensors))
        write_json_atomic(tmp / STATE_FILE, {"format": FORMAT_VERSION, "step": step, "state": skeleton})
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(run_dir)
        kept = f"the last good checkpoint, {previous[-1]}, is intact" if previous else "no earlier checkpoint exists"
        raise TrainingError(
            f"could not write the checkpoint of step {step} in {root} ({exc.strerror or exc}); {kept}. "
            f"Free disk space (or fix the permissions), then resume with 'betavae train --resume {run_dir}'."
        ) from exc
    if final.exists():  # an older checkpoint of the same step (a resumed run re-reaching it)
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)  # the rename is durable: a power cut cannot take the newest checkpoint back
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint` in ``path``, validated."""
    path = Path(path)
    state_path, tensor_path = path / STATE_FILE, path / TENSORS_FILE
    if not state_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"{path} is not a betavae checkpoint ({STATE_FILE} and {TENSORS_FILE} expected).")
    try:
        meta = json.loads(state_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{state_path} is not valid JSON ({exc}); the checkpoint is damaged.") from exc
    version = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(f"{state_path} is of checkpoint format {version}, written by a newer betavae; this one "
                              f"reads format {FORMAT_VERSION}. Resume it with that newer version.")
    if version != FORMAT_VERSION or "state" not in meta:
        raise CheckpointError(f"{state_path} is not a betavae checkpoint of format {FORMAT_VERSION}.")
    tensors = load_tensors(tensor_path)
    try:
        return unflatten_state(meta["state"], tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"{state_path}: {exc}") from None


# A training checkpoint's entries and their types (objective_auxiliary may be anything JSON and tensors hold).
_TRAINING_STATE: dict[str, type | tuple[type, ...]] = {
    "step": int, "model_spec": dict, "model": dict, "optimizer": dict, "objective": dict, "generator": torch.Tensor,
    "log_sums": dict, "log_count": int,
}
# Entries added later, with the value an older checkpoint stands for.
_LATER_ENTRIES: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "skipped_steps": (int, 0), "elapsed_seconds": ((int, float), 0.0), "config": (dict, None),
    "config_sha256": (str, None),
}


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """The state of a training checkpoint (see :func:`load_checkpoint`), checked to hold what resuming needs."""
    state = load_checkpoint(path)
    problem = None
    if not isinstance(state, dict):
        problem = "its state is not an object"
    else:
        missing = [k for k in _TRAINING_STATE if k not in state]
        kinds = {**_TRAINING_STATE, **{k: kind for k, (kind, _) in _LATER_ENTRIES.items()}}
        wrong = [k for k, kind in kinds.items()
                 if k in state and (not isinstance(state[k], kind) or isinstance(state[k], bool))]
        for key, (_, default) in _LATER_ENTRIES.items():
            state.setdefault(key, default)
        if missing or wrong:
            problem = "; ".join([f"it lacks {', '.join(missing)}"] * bool(missing)
                                + [f"its {', '.join(wrong)} of the wrong type"] * bool(wrong))
        elif not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
            problem = "its model weights are not all tensors"
        elif not isinstance(state["optimizer"].get("state"), dict) or not isinstance(
                state["optimizer"].get("param_groups"), list):
            problem = "its optimizer state lacks 'state' or 'param_groups'"
        elif path.name != f"step-{state['step']:08d}":
            problem = f"it says step {state['step']}"
    if problem:
        raise CheckpointError(f"{path} is not a complete training checkpoint ({problem}).")
    return state


def newest_training_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The newest checkpoint of ``run_dir`` that loads, older ones standing in for damaged ones (``warn`` is
    told of each); None without any checkpoint. Checkpoints that all fail to load are an error saying why:
    resuming must never start over in a run it cannot read."""
    found = list_checkpoints(run_dir)
    problems = []
    for path in reversed(found):
        try:
            return load_training_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            warn(f"betavae: skipping damaged checkpoint {path}: {exc}")
    if found:
        raise CheckpointError(
            f"{run_dir} has {len(found)} checkpoint(s) and none can be loaded, so it is not resumed (that would start "
            f"it over and replace its logs): {' '.join(problems)} Move the damaged checkpoints out of "
            f"{Path(run_dir) / CHECKPOINT_DIR} to start over, or resume with the betavae that wrote them."
        )
    return None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, with a clear error for anything else (pickles included)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}). betavae never loads pickled files; "
            "the file may be truncated or of another format."
        ) from exc


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """``module.load_state_dict(state)`` with a clear error on missing, extra or misshapen tensors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{source} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}. "
            "Was it written for another architecture or latent size?"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor '{key}' has shape {tuple(state[key].shape)}, the model expects "
                f"{tuple(tensor.shape)}. Was it written for another architecture or latent size?"
            )
    module.load_state_dict(state)
