"""What each running trial of a sweep is doing, and how long the sweep has left.

A worker keeps a :class:`TrialPhase` per trial it runs (training step n of N, or evaluating: encoding,
metric k of n) and a background thread copies it into the trial's Optuna system attributes every
few seconds (:func:`publish_phase`), so whatever watches the study, on this machine or another,
reads it from the storage (:func:`phase_of`); ``betavae.sweep.study.format_progress`` makes one progress
line of the study, with an estimate of the time left (:func:`seconds_left`) once a trial has finished.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import statistics
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from betavae.metrics.evaluate import EvaluationProgress
from betavae.training.rundir import METRICS_FILE

#: The Optuna system attribute a running trial's phase is kept in.
PHASE_ATTR = "betavae_phase"


class TrialPhase:
    """The phase of one running trial: what :func:`publish_phase` writes for it."""

    def __init__(self, run_dir: Path, steps: int):
        self.run_dir = Path(run_dir)
        self.steps = steps
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"phase": "starting"}

    def training(self) -> None:
        with self._lock:
            self._state = {"phase": "training", "steps": self.steps}

    def evaluating(self, event: EvaluationProgress | None = None) -> None:
        """Called with each of the evaluation's progress events (see ``evaluate_run``)."""
        state: dict[str, Any] = {"phase": "evaluating"}
        if event is not None and event.phase == "encoding":
            state.update(encoded=event.done, to_encode=event.total)
        elif event is not None and event.phase in ("scoring", "done"):
            state.update(metric=event.done + 1, metrics=event.total, name=event.metric)
        with self._lock:
            self._state = state

    def snapshot(self) -> dict[str, Any]:
        """The phase now; while training, with the step and seconds of the newest logged record."""
        with self._lock:
            state = dict(self._state)
        if state["phase"] == "training":
            record = last_record(self.run_dir / METRICS_FILE)
            if record is not None:
                state.update(step=int(record.get("step", 0)), elapsed=float(record.get("elapsed_seconds", 0.0)))
        return state


def last_record(path: Path, tail_bytes: int = 16384) -> dict[str, Any] | None:
    """The last complete JSON line of ``path`` (read from its end), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by the tail, or half-written
        if isinstance(record, dict):
            return record
    return None


@contextlib.contextmanager
def repeating(action: Callable[[], None], seconds: float, name: str, at_start: bool = False) -> Iterator[None]:
    """Run ``action`` every ``seconds`` in a background thread while the block runs (first at once if
    ``at_start``). Its errors are ignored: whatever it records is recorded again on the next round."""
    stop = threading.Event()

    def loop() -> None:
        if at_start:
            with contextlib.suppress(Exception):
                action()
        while not stop.wait(seconds):
            with contextlib.suppress(Exception):
                action()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def publish_phase(study: Any, trial_id: int, phase: TrialPhase, seconds: float) -> contextlib.AbstractContextManager:
    """Copy ``phase`` into the trial's system attributes (when it changed) every ``seconds`` while the
    block runs."""
    storage = study._storage
    last: list[dict[str, Any]] = []

    def publish() -> None:
        state = phase.snapshot()
        if not last or state != last[0]:
            storage.set_trial_system_attr(trial_id, PHASE_ATTR, state)
            last[:] = [state]

    return repeating(publish, seconds, f"phase-{trial_id}", at_start=True)


def describe(state: dict[str, Any]) -> str:
    """A phase in a few words: ``training 400/2000``, ``evaluating: encoding 45%``, ``metric 5/7 dci``."""
    if state.get("phase") == "training":
        return f"training {state.get('step', 0)}/{state.get('steps', '?')}"
    if state.get("phase") == "evaluating":
        if "to_encode" in state:
            return f"evaluating: encoding {100 * state['encoded'] // max(state['to_encode'], 1)}%"
        if "metric" in state:
            if state["metric"] > state["metrics"]:
                return "evaluating: done"
            return f"evaluating: metric {state['metric']}/{state['metrics']} {state['name']}"
        return "evaluating"
    return str(state.get("phase", "starting"))


def _age_seconds(start: datetime.datetime | None) -> float:
    if start is None:
        return 0.0
    now = datetime.datetime.now(start.tzinfo) if start.tzinfo else datetime.datetime.now()
    return max(0.0, (now - start).total_seconds())


def seconds_left(trials: list[Any], left: int, lanes: int) -> float | None:
    """Estimated seconds until every trial is done, or None before any trial finished.

    A trial is expected to take the median time of the finished ones; each running trial has that
    less its age left, each waiting trial all of it, shared over ``lanes`` trials at a time.
    """
    finished = [float(t.user_attrs["seconds"]) for t in trials
                if t.state.name == "COMPLETE" and "seconds" in t.user_attrs]
    if not finished:
        return None
    typical = statistics.median(finished)
    running = [max(0.0, typical - _age_seconds(t.datetime_start)) for t in trials if t.state.name == "RUNNING"]
    return (sum(running) + left * typical) / max(1, lanes)


def training_seconds_left(state: dict[str, Any]) -> float | None:
    """Seconds to the end of a training trial's steps at its pace so far."""
    step, steps, elapsed = state.get("step"), state.get("steps"), state.get("elapsed")
    if not step or not steps or not elapsed:
        return None
    return elapsed / step * max(0, steps - step)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def phase_of(trial: Any) -> dict[str, Any]:
    """The phase a running trial's worker last published."""
    return dict(trial.system_attrs.get(PHASE_ATTR) or {"phase": "starting"})
