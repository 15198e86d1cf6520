"""The run directory: the names of its files, its lock, and how a run directory is made.

A run directory holds::

    config.json                  the run's TrainConfig
    metrics.jsonl                one record per logging step
    checkpoints/step-NNNNNNNN/   tensors.safetensors and state.json (betavae.training.checkpoint)
    model.safetensors            the final weights, written after the last step
    diagnosis.json               the plain-words diagnosis of the finished run
    figures/                     traversals, reconstructions, samples and training curves
    report.html                  betavae report
    evaluation.json              betavae evaluate
    tensorboard/                 TensorBoard event files
    .betavae.lock                the lock of the process writing the run (pid, host, command)

Every process that writes a run directory holds its lock (an exclusive ``flock`` on ``.lock``) for
as long as it writes, so a second writer (a second ``betavae train --out R``, a ``--resume R``, a
sweep trial run again) stops with an error naming the holder instead of mixing two runs in one
directory. The kernel drops the lock when its holder dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from betavae.errors import BetaVAEError, CheckpointError, ConfigError, RunInUseError, TrainingError
from betavae.files import fsync_dir, is_temporary
from betavae.training.config import CONFIG_FILE, TrainConfig

# CONFIG_FILE is defined beside the code that reads it and imported here, so this module names every
# file of a run directory.

METRICS_FILE = "metrics.jsonl"
#: Lines of METRICS_FILE that are no logged record (cut by a kill, damaged), moved here on resume, not lost.
DAMAGED_METRICS_FILE = "metrics-damaged.jsonl"
CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
DIAGNOSIS_FILE = "diagnosis.json"
FIGURES_DIR = "figures"
REPORT_FILE = "report.html"
EVALUATION_FILE = "evaluation.json"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".betavae.lock"
REFERENCE_FILE = "REFERENCE.json"  # a shipped reference model's record (how it was made)

#: The shipped reference models' folder (:mod:`betavae.reference`): run directories kept read-only.
REFERENCE_ROOT = Path(__file__).resolve().parents[1] / "reference"

# Inside each checkpoint
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"

# Inside FIGURES_DIR
RECONSTRUCTIONS_FIGURE = "reconstructions.png"
SAMPLES_FIGURE = "samples.png"
TRAVERSALS_FIGURE = "traversals.png"
TRAVERSALS_ANIMATION = "traversals.gif"
TRAINING_CURVES_FIGURE = "training_curves.png"
FIGURE_FILES = (TRAINING_CURVES_FIGURE, RECONSTRUCTIONS_FIGURE, SAMPLES_FIGURE, TRAVERSALS_FIGURE, TRAVERSALS_ANIMATION)

# What betavae writes, for --overwrite: it replaces a directory holding nothing else.
_RUN_FILES = {CONFIG_FILE, METRICS_FILE, DAMAGED_METRICS_FILE, MODEL_FILE, DIAGNOSIS_FILE, REPORT_FILE, EVALUATION_FILE,
              LOCK_FILE, REFERENCE_FILE}
_CHECKPOINT_NAME = re.compile(r"step-\d{8}|\.tmp-step-\d{8}-\d+")  # complete, or being written
_TENSORBOARD_EVENTS = "events.out.tfevents."


def refuse_writes(run_dir: str | Path, action: str) -> None:
    """Raise :class:`ConfigError` when ``run_dir`` is a shipped reference model (they are read-only)."""
    try:
        resolved = Path(run_dir).resolve()
        inside = resolved.is_relative_to(REFERENCE_ROOT)
    except (OSError, ValueError):  # a path that cannot be looked up is no shipped model; the reader reports it
        return
    if inside:
        name = resolved.relative_to(REFERENCE_ROOT).parts[0] if resolved != REFERENCE_ROOT else "NAME"
        raise ConfigError(f"{run_dir} is a shipped reference model and is kept as shipped; {action} a copy instead: "
                          f"betavae reference --copy {name} runs/{name}")


#: Config values a resumed run may change: how long it trains, how it reports and saves, where it runs.
#: Every other value shapes the model it trains, so a run resumed with another one would be a mix of two.
RESUMABLE_FIELDS = ("steps", "time_limit", "log_every", "checkpoint_every", "keep_checkpoints", "collapse_threshold",
                    "skip_nonfinite", "figures", "device", "compile", "out", "overwrite")


def config_record(config: TrainConfig) -> dict[str, Any]:
    """What every checkpoint carries of the config it was trained with: the values, and a hash of those
    that may not change on resume (a quick check; the values name what changed)."""
    return {"config": config.to_dict(), "config_sha256": _fingerprint(config.to_dict())}


def _fingerprint(values: dict[str, Any]) -> str:
    fixed = {k: v for k, v in values.items() if k not in RESUMABLE_FIELDS}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()


def check_unchanged(checkpoint: dict[str, Any], config: TrainConfig, run_dir: Path) -> None:
    """Raise :class:`ConfigError` naming the values of ``config`` that differ from those ``checkpoint`` was
    trained with (apart from :data:`RESUMABLE_FIELDS`). Checkpoints written before they carried a config pass."""
    saved = checkpoint.get("config")
    if not isinstance(saved, dict) or checkpoint.get("config_sha256") == _fingerprint(config.to_dict()):
        return
    current = config.to_dict()
    saved = {**type(config)().to_dict(), **saved}  # a field newer than the checkpoint: its default
    changed = [f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
               if k not in RESUMABLE_FIELDS and saved.get(k) != current.get(k)]
    if changed:
        raise ConfigError(
            f"{run_dir / CONFIG_FILE} differs from the config its checkpoint of step {checkpoint['step']} was trained "
            f"with: {', '.join(changed)}. A resumed run keeps its settings (only {', '.join(RESUMABLE_FIELDS[:-2])} "
            "may change); restore those values, or train a new run (another --out) with the new ones."
        )


class RunLock:
    """This thread's hold on a run directory's lock; :meth:`release` (or leaving ``with``) lets it go.

    Taken again by the thread that holds it (the training loop drawing figures, then the report), it
    is shared and let go by the last release; any other thread or process is refused.
    """

    def __init__(self, run_dir: Path, key: tuple[Path, int], fd: int):
        self.run_dir = run_dir
        self._key = key
        self._fd = fd
        self._holds = 1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Let go of this hold; the last one removes the lock file and unlocks."""
        if self._holds == 0:
            return
        self._holds -= 1
        if self._holds:
            return
        with _HELD_GUARD:
            _HELD.pop(self._key, None)
        path = self.run_dir / LOCK_FILE
        try:  # removed while still locked: a process waiting on this file sees it is gone and starts over
            if os.path.samestat(os.fstat(self._fd), os.stat(path)):
                path.unlink()
        except OSError:
            pass  # the directory went away or became read-only; the lock goes with the descriptor
        os.close(self._fd)


_HELD: dict[tuple[Path, int], RunLock] = {}
_HELD_GUARD = threading.Lock()


def lock(run_dir: str | Path) -> RunLock:
    """Take the lock of ``run_dir`` (an existing directory) for writing; :class:`RunInUseError` if another holds it."""
    run_dir = Path(run_dir)
    key = (run_dir.resolve(), threading.get_ident())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held._holds += 1
            return held
    path = run_dir / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot lock run directory {run_dir} for writing: {exc.strerror or exc} "
                              f"({path}). Check that it is a directory you may write.") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _in_use(run_dir, fd)
            os.close(fd)
            raise error from None
        try:  # the holder we waited on may have removed the file after we opened it: lock the new one
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_holder()) + "\n").encode())
    except OSError:
        pass  # the lock holds without its description (a full disk); a second writer is still refused
    held = RunLock(run_dir, key, fd)
    with _HELD_GUARD:
        _HELD[key] = held
    return held


def _holder() -> dict[str, Any]:
    """This process, as a second writer is told about it."""
    argv = list(sys.argv)
    if argv and argv[0].endswith((os.path.join("betavae", "__main__.py"), os.sep + "betavae")):
        argv[0] = "betavae"
    command = shlex.join(argv) if argv and argv[0] else "python"
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command[:300],
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _probe(run_dir: Path) -> None:
    """Raise :class:`RunInUseError` if a process holds the lock of ``run_dir``; writes nothing."""
    with _HELD_GUARD:
        if (run_dir.resolve(), threading.get_ident()) in _HELD:
            return  # this thread's own lock
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return  # no lock file: no writer (every writer makes one)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(run_dir, fd) from None
    finally:
        os.close(fd)


def _in_use(run_dir: Path, fd: int) -> RunInUseError:
    """The error for a run whose lock (open as ``fd``) another holds, naming the holder."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        holder = f"pid {int(info['pid'])} ({info['command']}, on {info['host']} since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        holder = "another process (it has not said which yet)"
    return RunInUseError(f"run directory {run_dir} is in use by {holder}; wait for it to finish (or stop it), "
                         "then try again.")


def check_new(config: TrainConfig) -> None:
    """Raise what :func:`create` would raise about the directory of ``config``, writing nothing."""
    _check_existing(config.run_dir(), config.overwrite)


def _check_existing(run_dir: Path, overwrite: bool) -> None:
    _probe(run_dir)  # a writer at work is named, rather than "already exists"
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.is_dir() else []
    if run_dir.exists() and (not run_dir.is_dir() or entries):
        if not overwrite:
            raise ConfigError(
                f"run directory {run_dir} already exists; choose another --out, resume it with "
                f"'betavae train --resume {run_dir}', or pass --overwrite to replace it."
            )
        refuse_writes(run_dir, "train")
        problem = _not_a_run(run_dir)
        if problem:
            raise ConfigError(f"{run_dir} is not a betavae run directory ({problem}); betavae will not delete it "
                              "even with --overwrite. Choose another --out.")


def _not_a_run(run_dir: Path) -> str | None:
    """Why ``run_dir`` is not provably a run betavae wrote (so --overwrite may not delete it), or None."""
    if run_dir.is_symlink():
        return "it is a symbolic link, and betavae replaces no directory through a link"
    if not run_dir.is_dir():
        return "it is not a directory"
    if not (run_dir / CONFIG_FILE).is_file() or (run_dir / CONFIG_FILE).is_symlink():
        return f"no {CONFIG_FILE}"
    try:
        TrainConfig.load(run_dir)
    except BetaVAEError as exc:
        return f"its {CONFIG_FILE} is not a valid betavae config: {exc}"
    foreign = [str(p.relative_to(run_dir)) for p in _foreign_entries(run_dir)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return f"it holds what betavae does not write: {shown}"
    return None


def _foreign_entries(run_dir: Path) -> list[Path]:
    """Entries of ``run_dir`` that no betavae run writes (links count: a link is never betavae's)."""
    foreign = []
    for entry in sorted(run_dir.iterdir()):
        name, is_dir = entry.name, entry.is_dir() and not entry.is_symlink()
        if entry.is_symlink():
            foreign.append(entry)
        elif name in _RUN_FILES or is_temporary(name):
            foreign += [entry] if is_dir else []
        elif name == CHECKPOINT_DIR and is_dir:
            for checkpoint in sorted(entry.iterdir()):
                if not (_CHECKPOINT_NAME.fullmatch(checkpoint.name) and checkpoint.is_dir() and not checkpoint.is_symlink()):
                    foreign.append(checkpoint)
                    continue
                foreign += _unexpected_files(checkpoint, {TENSORS_FILE, STATE_FILE})
        elif name == FIGURES_DIR and is_dir:
            foreign += _unexpected_files(entry, set(FIGURE_FILES))
        elif name == TENSORBOARD_DIR and is_dir:
            for path in sorted(entry.rglob("*")):
                if path.is_symlink() or (not path.is_dir() and not path.name.startswith(_TENSORBOARD_EVENTS)):
                    foreign.append(path)
        else:
            foreign.append(entry)
    return foreign


def _unexpected_files(directory: Path, names: set[str]) -> list[Path]:
    return [p for p in sorted(directory.iterdir())
            if p.is_symlink() or p.is_dir() or not (p.name in names or is_temporary(p.name))]


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name) and p.name[0] != ".")


def checkpoint_step(path: Path) -> int:
    """The step of checkpoint directory ``path`` (``step-NNNNNNNN``)."""
    return int(path.name.removeprefix("step-"))


def write_error(exc: OSError, run_dir: Path) -> TrainingError:
    """A failed write in ``run_dir`` (a full disk, lost permissions) as the user hears of it: what failed,
    what is intact, and how to go on."""
    checkpoints = list_checkpoints(run_dir)
    kept = (f"the last good checkpoint, {checkpoints[-1]}, is intact" if checkpoints
            else "no checkpoint had been written yet")
    failed = f"{exc.filename}" if exc.filename else str(run_dir)
    return TrainingError(f"could not write {failed} ({exc.strerror or exc}); {kept}. Free disk space (or fix the "
                         f"permissions), then go on with 'betavae train --resume {run_dir}'.")


@contextmanager
def explaining_write_errors(run_dir: Path) -> Iterator[None]:
    """Turn an :class:`OSError` raised inside into :func:`write_error`'s message (never a traceback)."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, run_dir) from exc


def create(config: TrainConfig) -> RunLock:
    """Make the run directory of a new run and write its config; returns the lock, held until released.

    An existing directory is refused, or replaced with ``overwrite`` when it is a betavae run.
    """
    run_dir = config.run_dir()
    _check_existing(run_dir, config.overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fsync_dir(run_dir.parent)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {run_dir}: {exc.strerror or exc}. "
                          "Choose another --out.") from exc
    held = lock(run_dir)
    try:
        _check_existing(run_dir, config.overwrite)  # again, now that no other writer can start
        _empty(run_dir)
        config.save(run_dir / CONFIG_FILE)
    except OSError as exc:
        held.release()
        raise ConfigError(f"cannot write the config of {run_dir} ({exc.strerror or exc}); free disk space (or fix the "
                          "permissions), then train again.") from exc
    except BaseException:
        held.release()
        raise
    return held


def _empty(run_dir: Path) -> None:
    """Remove what an earlier run left (``overwrite``); the config goes last, so a kill leaves a run."""
    for entry in sorted(run_dir.iterdir(), key=lambda p: p.name == CONFIG_FILE):
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def open_existing(run_dir: str | Path) -> RunLock:
    """Lock an existing run directory for writing (to resume it); refuses anything but a betavae run."""
    run_dir = Path(run_dir)
    refuse_writes(run_dir, "train")
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"{run_dir / CONFIG_FILE} does not exist; is {run_dir} a betavae run directory?")
    return lock(run_dir)
