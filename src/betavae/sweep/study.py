"""The sweep's Optuna study: a fixed grid of (weight, seed) trials that any number of workers, on one
machine or many, share through one storage (SQLite by default, PostgreSQL across machines).

How each grid point runs exactly once:

* The grid is a set of enqueued trials (``Study.enqueue_trial``: state WAITING, fixed params). The
  process that creates the study enqueues it; a later run adds only grid points no trial holds.
* A worker claims a WAITING trial by moving it to RUNNING with ``storage.set_trial_state_values``,
  which the RDB storage does under a row lock (``SELECT ... FOR UPDATE``): of two workers claiming one
  trial, exactly one succeeds. Right after claiming, a worker drops its trial (PRUNED, with
  ``duplicate_of``) if the same grid point already completed or is running under an older trial.
* A running trial records an Optuna heartbeat every ``heartbeat_seconds``. A trial whose heartbeat is
  older than three intervals (its worker was killed, its machine lost) is failed by
  ``optuna.storages.fail_stale_trials`` and re-enqueued by ``RetryHeartbeatStaleTrialCallback``; a
  trial held by a dead process on this very machine is reclaimed at once. The retry resumes the
  trial's run directory from its newest checkpoint.
* With ``parallel`` > 1 a worker claims up to that many waiting trials at once, holds a heartbeat for
  each, trains the new ones together in one process and records each trial's outcome on its own.
* A trial that fails on its own (NaN loss, bad data) is recorded as FAIL with its error and is not
  retried: it would fail again. Ctrl-C re-enqueues the interrupted trial before exiting.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import warnings
from typing import Any, Iterator, TextIO

from betavae.errors import BetaVAEError, ConfigError
from betavae.sweep.progress import (TrialPhase, describe, format_duration, phase_of, publish_phase, repeating,
                                    seconds_left, training_seconds_left)
from betavae.sweep.spec import SweepSpec
from betavae.sweep.storage import check_storage_url, redact_text, redact_url
from betavae.sweep.trial import run_trials

HOST = socket.gethostname()
#: Study attribute holding the sweep's definition; a run with other settings must use another study.
SPEC_ATTR = "betavae_sweep"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("betavae sweep needs Optuna; install it with: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@contextlib.contextmanager
def _quiet(optuna: Any) -> Iterator[None]:
    """Optuna's heartbeat API is marked experimental (since 2.8/2.9); its warnings say nothing to a user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_study(spec: SweepSpec) -> Any:
    """Create the study (enqueueing the grid) or join the existing one; its definition must match."""
    optuna = _optuna()
    from sqlalchemy.exc import SQLAlchemyError

    url = check_storage_url(spec.storage_url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # several local workers write to one file
    else:
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
        engine_kwargs["pool_pre_ping"] = True
    shown = redact_url(spec.storage_url)
    for attempt in range(4):
        try:
            return _open(optuna, spec, url, engine_kwargs)
        except SQLAlchemyError as exc:
            # workers starting together race to create Optuna's tables and version row; one loses once
            if attempt == 3:
                raise BetaVAEError(f"cannot use the study storage {shown}: "
                                   f"{redact_text(_one_line(exc), spec.storage_url)}") from None
            time.sleep(0.5 + 0.5 * attempt)
        except BetaVAEError:
            raise
        except (ImportError, ValueError, RuntimeError) as exc:
            # a driver that fails to load, a study schema written by another Optuna version, ...
            raise BetaVAEError(f"cannot use the study storage {shown}: "
                               f"{redact_text(_one_line(exc), spec.storage_url)}") from None
    raise AssertionError("unreachable")


def _open(optuna: Any, spec: SweepSpec, url: str, engine_kwargs: dict[str, Any]) -> Any:
    with _quiet(optuna):
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_seconds,
            grace_period=3 * spec.heartbeat_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
        )
    if url.startswith("sqlite"):
        _serialize_sqlite(storage.engine)
    # get_storage adds Optuna's cache of finished trials; the study and this module share it
    storage = optuna.storages.get_storage(storage)
    created = True
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        created = False
        study = optuna.load_study(study_name=spec.name, storage=storage)
    wanted = spec.comparison_key()
    if created:
        study.set_user_attr(SPEC_ATTR, wanted)
        enqueue_missing(study, spec)
    else:
        saved = _wait_for_attr(study, SPEC_ATTR)
        if saved is None:  # the creator died before describing the study: adopt it
            study.set_user_attr(SPEC_ATTR, wanted)
        elif saved != wanted:
            raise ConfigError(
                f"study '{spec.name}' in {redact_url(spec.storage_url)} was started with other settings "
                f"({'; '.join(_differences(saved, wanted))}); run the same command as before, or use another --out / "
                "--study-name."
            )
    return study


def _differences(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """Each setting that differs, as ``name: then -> now`` (``base.lr: 0.001 -> 0.01``; absent as ``unset``)."""
    out = []
    for key in sorted(set(saved) | set(wanted)):
        then, now = saved.get(key, _UNSET), wanted.get(key, _UNSET)
        if then == now:
            continue
        if isinstance(then, dict) and isinstance(now, dict):
            out += _differences(then, now, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: {_setting(then)} -> {_setting(now)}")
    return out


_UNSET = object()


def _setting(value: Any) -> str:
    return "unset" if value is _UNSET else repr(value)


def _serialize_sqlite(engine: Any) -> None:
    """Make every transaction on the SQLite file ``BEGIN IMMEDIATE``: it takes the file's write lock before
    its first read, so a worker's read-check-write (Optuna's WAITING -> RUNNING in :func:`claim`) cannot
    interleave with another's. Python's sqlite3 driver otherwise begins a transaction at the first write
    only, and two workers could both read a trial as WAITING and both claim it (SQLite ignores the
    ``SELECT ... FOR UPDATE`` that keeps PostgreSQL workers apart). Waiting for the lock is bounded by
    the connection's timeout."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_does_not_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections Optuna opened while creating its tables predate the hooks


def _wait_for_attr(study: Any, name: str, seconds: float = 10.0) -> Any:
    """A study attribute its creator is about to write (None if it never comes)."""
    deadline = time.monotonic() + seconds
    while True:
        value = study.user_attrs.get(name)
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def grid_point(trial: Any) -> tuple[float, int] | None:
    """The (weight, seed) a trial stands for: its params, or the fixed params it was enqueued with."""
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    if "weight" not in params or "seed" not in params:
        return None
    return float(params["weight"]), int(params["seed"])


def _terminal(trial: Any) -> bool:
    """Completed, or failed on its own (not by being interrupted)."""
    name = trial.state.name
    return name == "COMPLETE" or (name == "FAIL" and "error" in trial.user_attrs)


def enqueue_missing(study: Any, spec: SweepSpec) -> int:
    """Enqueue every grid point no trial holds (waiting, running or finished); the number added."""
    held = {grid_point(t) for t in study.get_trials(deepcopy=False)
            if t.state.name in ("WAITING", "RUNNING", "COMPLETE") or _terminal(t)}
    missing = [p for p in spec.grid() if p not in held]
    for weight, seed in missing:
        study.enqueue_trial({"weight": weight, "seed": seed}, skip_if_exists=False)
    return len(missing)


def _alive_here(worker: str | None) -> bool | None:
    """Whether the process ``host:pid`` lives, when it ran on this machine (None: cannot tell)."""
    if not worker or ":" not in worker:
        return None
    host, pid = worker.rsplit(":", 1)
    if host != HOST or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim(study: Any) -> None:
    """Fail and re-enqueue RUNNING trials whose worker is gone: stale heartbeat (any machine), or a
    dead process on this machine (at once)."""
    optuna = _optuna()
    with _quiet(optuna):
        optuna.storages.fail_stale_trials(study)
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if _alive_here(trial.user_attrs.get("worker")) is False and trial.user_attrs.get("worker") != _me():
            _fail_and_retry(study, storage, trial._trial_id)


def _fail_and_retry(study: Any, storage: Any, trial_id: int) -> None:
    optuna = _optuna()
    try:
        if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
            return
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # another worker got there first
    with _quiet(optuna):
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, storage.get_trial(trial_id))


def _me() -> str:
    return f"{HOST}:{os.getpid()}"


def claim(study: Any) -> Any | None:
    """Claim the oldest WAITING trial whose grid point is not already done or being run; None if none."""
    optuna = _optuna()
    TrialState = optuna.trial.TrialState
    storage = study._storage
    for waiting in sorted(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)), key=lambda t: t.number):
        try:
            if not storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        trial = optuna.trial.Trial(study, waiting._trial_id)
        storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr("worker", _me())
        point = grid_point(waiting)
        others = [t for t in study.get_trials(deepcopy=False) if t.number != waiting.number and grid_point(t) == point]
        first = next((t for t in others if _terminal(t) or (t.state.name == "RUNNING" and t.number < waiting.number)), None)
        if point is None or first is not None:
            trial.set_user_attr("duplicate_of", None if first is None else first.number)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        return trial
    return None


def heartbeat(study: Any, trial_id: int, seconds: float) -> contextlib.AbstractContextManager:
    """Record the trial's heartbeat every ``seconds`` in a background thread while the block runs (a
    missed beat is retried; a long outage makes the trial stale)."""
    storage = study._storage
    return repeating(lambda: storage.record_heartbeat(trial_id), seconds, f"heartbeat-{trial_id}")


def progress(study: Any, spec: SweepSpec) -> dict[str, Any]:
    """Grid points that are done (completed or failed for good), running (with each one's phase), and
    left, and the estimated seconds left (None before a trial finished)."""
    trials = study.get_trials(deepcopy=False)
    done = {grid_point(t) for t in trials if _terminal(t)}
    running = {grid_point(t) for t in trials if t.state.name == "RUNNING"} - done
    grid = spec.grid()
    left = [p for p in grid if p not in done and p not in running]
    phases = {grid_point(t): phase_of(t) for t in trials if t.state.name == "RUNNING"}
    return {"done": [p for p in grid if p in done], "running": [p for p in grid if p in running], "left": left,
            "phases": {p: phases.get(p, {"phase": "starting"}) for p in grid if p in running},
            "seconds_left": seconds_left(trials, len(left), spec.workers * spec.parallel)}


def progress_key(state: dict[str, Any]) -> Any:
    """What of ``state`` is worth a new line at once: the trials' states and phases, not the step."""
    phases = tuple((p, describe(s).split(" ")[0], s.get("metric"), "to_encode" in s) for p, s in state["phases"].items())
    return tuple(map(tuple, (state["done"], state["running"], state["left"]))) + (phases,)


def format_progress(state: dict[str, Any], spec: SweepSpec, started: float) -> str:
    elapsed = time.monotonic() - started
    remaining = state.get("seconds_left")
    busy = state["running"] or state["left"]
    estimate = f", about {format_duration(remaining)} left" if remaining is not None and busy else ""

    def show(point: tuple[float, int]) -> str:
        phase = state.get("phases", {}).get(point, {"phase": "starting"})
        text = f"{spec.weight_symbol}={point[0]:g}/s{point[1]} {describe(phase)}"
        to_go = training_seconds_left(phase) if phase.get("phase") == "training" else None
        return text + (f" (~{format_duration(to_go)} to go)" if to_go is not None else "")

    running = ", ".join(show(p) for p in state["running"]) or "-"
    return (f"betavae sweep: {len(state['done'])}/{len(spec.grid())} done, {len(state['running'])} running, "
            f"{len(state['left'])} left; {elapsed:.0f}s elapsed{estimate} | running: {running}")


def watch(study: Any, spec: SweepSpec, stream: TextIO, started: float, stop: Any, every: float = 15.0) -> None:
    """Print the sweep's progress until ``stop()`` is true: at once on a new trial state or phase,
    else every ``every`` seconds while something runs."""
    last, shown_at = None, 0.0
    while not stop():
        with contextlib.suppress(Exception):  # a storage hiccup costs one progress line, not the sweep
            state = progress(study, spec)
            key = progress_key(state)
            if key != last or (state["running"] and time.monotonic() - shown_at > every):
                print(format_progress(state, spec, started), file=stream, flush=True)
                last, shown_at = key, time.monotonic()
        time.sleep(spec.poll_seconds)


def work(spec: SweepSpec, stream: TextIO | None = None, max_trials: int | None = None) -> int:
    """Run trials of the sweep's study until every grid point is done; the number this worker ran.

    With ``spec.parallel`` = K the worker claims up to K waiting trials at once and trains them
    together in one process (:func:`betavae.sweep.trial.run_trials`), each with its own heartbeat.
    """
    optuna = _optuna()
    stream = stream or sys.stderr
    study = open_study(spec)
    started, ran, last_state = time.monotonic(), 0, None
    while max_trials is None or ran < max_trials:
        reclaim(study)
        limit = spec.parallel if max_trials is None else min(spec.parallel, max_trials - ran)
        trials = []
        while len(trials) < limit:
            trial = claim(study)
            if trial is None:
                break
            trials.append(trial)
        if not trials:
            state = progress(study, spec)
            if not state["left"] and not state["running"]:
                break
            waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
            if not state["running"] and not waiting:
                enqueue_missing(study, spec)  # a grid point lost its trial (a kill between fail and retry)
                continue
            if progress_key(state) != last_state:
                print(format_progress(state, spec, started) + " (waiting for other workers)", file=stream, flush=True)
                last_state = progress_key(state)
            time.sleep(spec.poll_seconds)
            continue
        points = [(trial.suggest_categorical("weight", spec.weights), trial.suggest_categorical("seed", spec.seeds))
                  for trial in trials]
        names = [spec.trial_name(weight, seed) for weight, seed in points]
        starting = ", ".join(f"{name} (trial {trial.number})" for name, trial in zip(names, trials))
        print(f"betavae sweep: starting {starting}" + (" together" if len(trials) > 1 else ""), file=stream, flush=True)
        trials_started = time.monotonic()
        configs = [spec.trial_config(weight, seed) for weight, seed in points]
        phases = [TrialPhase(config.run_dir(), config.steps) for config in configs]
        try:
            with contextlib.ExitStack() as beats:
                for trial, phase in zip(trials, phases):
                    beats.enter_context(heartbeat(study, trial._trial_id, spec.heartbeat_seconds))
                    beats.enter_context(publish_phase(study, trial._trial_id, phase, spec.poll_seconds))
                outcomes = run_trials(spec, points, [spec_log(spec, name) for name in names], phases)
        except (KeyboardInterrupt, SystemExit):
            for trial in trials:  # interrupted, not failed: run them again later
                _fail_and_retry(study, study._storage, trial._trial_id)
            raise
        except Exception as exc:  # noqa: BLE001 - run_trials reports per trial; anything else fails them all
            outcomes = [exc] * len(trials)
        seconds = time.monotonic() - trials_started
        for trial, name, outcome in zip(trials, names, outcomes):
            if isinstance(outcome, BaseException):  # any failure of one trial is recorded, the sweep goes on
                trial.set_user_attr("error", f"{type(outcome).__name__}: {_one_line(outcome)}")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                print(f"betavae sweep: {name} failed: {_one_line(outcome)} (log: {spec_log(spec, name)})",
                      file=stream, flush=True)
                continue
            for key, value in outcome.items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("seconds", round(seconds, 2))
            study.tell(trial, outcome["reconstruction"])
            print(f"betavae sweep: {name} done in {seconds:.1f}s: reconstruction "
                  f"{outcome['reconstruction']:.4g}, KL {outcome['kl']:.4g}, {outcome['active_dims']} active dims",
                  file=stream, flush=True)
        ran += len(trials)
    return ran


def spec_log(spec: SweepSpec, name: str) -> Any:
    from pathlib import Path

    return Path(spec.out) / "logs" / f"{name}.log"


def collect(study: Any, spec: SweepSpec) -> list[dict[str, Any]]:
    """One record per grid point: its completed trial, else its failed one (the newest of each)."""
    by_point: dict[tuple[float, int], Any] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        point = grid_point(t)
        if point is None or not _terminal(t):
            continue
        if point not in by_point or t.state.name == "COMPLETE":
            by_point[point] = t
    records = []
    for weight, seed in spec.grid():
        t = by_point.get((weight, seed))
        record: dict[str, Any] = {"weight": weight, "seed": seed, "name": spec.trial_name(weight, seed),
                                  "state": "MISSING" if t is None else t.state.name,
                                  "trial": None if t is None else t.number}
        if t is not None:
            record.update(t.user_attrs)
            record.pop("worker", None)
        records.append(record)
    return records
