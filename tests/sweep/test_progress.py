"""A running trial's phase travels through the study to the progress line, with the time left."""

from __future__ import annotations

import datetime
import json
import time
from types import SimpleNamespace

import optuna
import pytest

from betavae.metrics import EvaluationProgress
from betavae.sweep.progress import (PHASE_ATTR, TrialPhase, describe, last_record, phase_of, publish_phase,
                                    seconds_left, training_seconds_left)
from betavae.sweep.spec import SweepSpec
from betavae.sweep.study import format_progress, progress, progress_key


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the phase was not published in time"
        time.sleep(0.02)


def test_a_trials_phase_is_published_to_the_study(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    trial = study.ask()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    phase = TrialPhase(run_dir, steps=40)

    def published():
        return study.get_trials(deepcopy=False)[0].system_attrs.get(PHASE_ATTR)

    with publish_phase(study, trial._trial_id, phase, 0.02):
        _wait_for(lambda: published() == {"phase": "starting"})
        phase.training()
        with open(run_dir / "metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": 10, "elapsed_seconds": 2.0}) + "\n")
            f.write(json.dumps({"step": 20, "elapsed_seconds": 4.0}) + "\n")
            f.write('{"step": 3')  # a record being written: not read
        _wait_for(lambda: (published() or {}).get("step") == 20)
        state = published()
        assert describe(state) == "training 20/40"
        assert training_seconds_left(state) == pytest.approx(4.0)  # 20 more steps at 0.2 s each
        phase.evaluating(EvaluationProgress("encoding", 450, 1000))
        _wait_for(lambda: describe(published()) == "evaluating: encoding 45%")
        phase.evaluating(EvaluationProgress("scoring", 4, 7, "dci"))
        _wait_for(lambda: describe(published()) == "evaluating: metric 5/7 dci")
    assert phase_of(study.get_trials(deepcopy=False)[0])["name"] == "dci"


def test_last_record_reads_the_newest_complete_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert last_record(path) is None
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(0, 5000, 10)))
    assert last_record(path) == {"step": 4990}


def _trial(state, seconds=None, age=0.0):
    start = datetime.datetime.now() - datetime.timedelta(seconds=age)
    return SimpleNamespace(state=SimpleNamespace(name=state), user_attrs={} if seconds is None else {"seconds": seconds},
                           datetime_start=start)


def test_time_left_from_the_finished_trials():
    assert seconds_left([_trial("RUNNING", age=5)], left=3, lanes=1) is None  # nothing finished yet
    trials = [_trial("COMPLETE", 100), _trial("COMPLETE", 120), _trial("COMPLETE", 400), _trial("RUNNING", age=30)]
    # median 120 s: the running trial has 90 s left, each of 2 waiting trials 120 s
    assert seconds_left(trials, left=2, lanes=1) == pytest.approx(330, abs=1)
    assert seconds_left(trials, left=2, lanes=2) == pytest.approx(165, abs=1)


def test_progress_line_shows_each_running_trials_phase_and_the_estimate(tmp_path):
    spec = SweepSpec(out=str(tmp_path / "sweep"), weights=[1.0, 4.0], seeds=[0])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage)
    for weight in spec.weights:
        study.enqueue_trial({"weight": weight, "seed": 0})
    first, second = study.ask(), study.ask()
    for trial in (first, second):
        trial.suggest_categorical("weight", spec.weights)
        trial.suggest_categorical("seed", spec.seeds)
    study._storage.set_trial_system_attr(first._trial_id, PHASE_ATTR, {"phase": "training", "steps": 40, "step": 10,
                                                                       "elapsed": 5.0})
    study._storage.set_trial_system_attr(second._trial_id, PHASE_ATTR, {"phase": "evaluating", "metric": 2,
                                                                        "metrics": 7, "name": "factor_vae_score"})
    state = progress(study, spec)
    line = format_progress(state, spec, time.monotonic() - 12)
    assert "0/2 done, 2 running, 0 left; 12s elapsed" in line
    assert "β=1/s0 training 10/40 (~15 s to go)" in line
    assert "β=4/s0 evaluating: metric 2/7 factor_vae_score" in line
    assert "left |" not in line  # no estimate before a trial finished
    before = progress_key(state)
    study._storage.set_trial_system_attr(first._trial_id, PHASE_ATTR, {"phase": "training", "steps": 40, "step": 20,
                                                                       "elapsed": 10.0})
    assert progress_key(progress(study, spec)) == before  # a new step alone is no new line
    study._storage.set_trial_user_attr(second._trial_id, "seconds", 60.0)
    study.tell(second, 1.0)
    state = progress(study, spec)
    assert progress_key(state) != before
    assert "1/2 done, 1 running, 0 left" in format_progress(state, spec, time.monotonic()) and "left |" in \
        format_progress(state, spec, time.monotonic())
