"""Several workers on one study: two processes against one PostgreSQL database, and a worker killed
mid-trial (SIGKILL) whose sweep is run again to completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter

import optuna

from tests.sweep.conftest import betavae_command, subprocess_env, tiny_args


def _completed_points(study) -> Counter:
    return Counter((t.params["weight"], t.params["seed"]) for t in study.get_trials() if t.state.name == "COMPLETE")


def test_two_workers_share_a_postgres_study(toy_npz, tmp_path, postgres_url):
    # two "machines": separate output folders, one study in one PostgreSQL database
    commands = [betavae_command(tiny_args(toy_npz, tmp_path / name, "--storage", postgres_url, "--study-name", "shared",
                                          "--metric", "udr")) for name in ("a", "b")]
    workers = [subprocess.Popen(c, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for c in commands]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    assert _completed_points(study) == Counter({(1.0, 0): 1, (1.0, 1): 1, (4.0, 0): 1, (4.0, 1): 1})
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials())
    trained = [p.parent.name for name in ("a", "b") for p in (tmp_path / name / "trials").glob("*/model.safetensors")]
    assert sorted(trained) == ["beta-beta1-seed0", "beta-beta1-seed1", "beta-beta4-seed0", "beta-beta4-seed1"]
    for name in ("a", "b"):  # either machine summarises every trial, from the shared study
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["metric"] == "udr" and len(summary["trials"]) == 4
        assert all(t["state"] == "COMPLETE" and t["metrics"]["udr"] is not None for t in summary["trials"])


def test_killed_worker_resumes_and_nothing_runs_twice(toy_npz, tmp_path):
    out = tmp_path / "sweep"
    args = tiny_args(toy_npz, out, "--metric", "mig", seeds="1", steps=16)
    worker = subprocess.Popen(betavae_command(args), env=subprocess_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "trials" / "beta-beta1-seed0"
    deadline = time.monotonic() + 120
    while not list((first / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(worker.pid, signal.SIGKILL)  # mid-trial: after a checkpoint, before the run finishes
    worker.wait()
    assert list((first / "checkpoints").glob("step-*")) and not (first / "model.safetensors").exists()

    result = subprocess.run(betavae_command(args), env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="betavae-sweep-sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert _completed_points(study) == Counter({(1.0, 0): 1, (4.0, 0): 1})
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(failed) == 1 and "error" not in failed[0].user_attrs  # the killed attempt, re-enqueued
    assert "resuming" in (out / "logs" / "beta-beta1-seed0.log").read_text()
    steps = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 17, 2))  # every logged step once: resumed, not restarted, nothing repeated


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie left for a parent that never reaps it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_stop_when_the_sweep_process_is_killed(toy_npz, tmp_path):
    out = tmp_path / "sweep"
    args = tiny_args(toy_npz, out, "--metric", "mig", "--workers", "2", steps=100_000)
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stream:  # the workers inherit it
        sweep = subprocess.Popen(betavae_command(args), env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=stream)
    storage = f"sqlite:///{out / 'study.db'}"
    deadline, workers = time.monotonic() + 120, set()
    while len(workers) < 2 and time.monotonic() < deadline:  # both workers have claimed a trial
        time.sleep(0.2)
        if (out / "study.db").exists():
            try:
                study = optuna.load_study(study_name="betavae-sweep-sweep", storage=storage)
                workers = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in study.get_trials()
                           if t.state.name == "RUNNING" and "worker" in t.user_attrs}
            except Exception:  # noqa: BLE001 - the study is still being created
                continue
    assert len(workers) == 2 and sweep.pid not in workers
    sweep.kill()  # the sweep process alone, as a kill PID would; its workers were not signalled
    sweep.wait()
    deadline = time.monotonic() + 60
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in workers)
    trials = optuna.load_study(study_name="betavae-sweep-sweep", storage=storage).get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert len(stopped) == 2 and all("error" not in t.user_attrs for t in stopped)  # interrupted, not failed
    assert len([t for t in trials if t.state.name == "WAITING"]) == 4  # the two again, and the two never started
    assert err.read_text().count("the sweep process that started this worker is gone") == 2
