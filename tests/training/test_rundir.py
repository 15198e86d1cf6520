"""The run directory: one writer at a time (its lock), and what creating one may replace."""

import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import betavae
from betavae.errors import RunInUseError
from betavae.metrics import evaluate_run
from betavae.training import rundir
from betavae.training.logging import read_metrics


def _config(data, out, **kw):
    values = dict(data=str(data), steps=10, batch_size=16, latents=3, lr=1e-3, log_every=5, checkpoint_every=5,
                  out=str(out), figures=False)
    values.update(kw)
    return betavae.TrainConfig(**values)


def _cli(*args):
    return [sys.executable, "-m", "betavae", *map(str, args)]


class _OtherWriter:
    """The lock of ``run_dir`` held through a descriptor of its own, as another process holds it."""

    def __init__(self, run_dir, pid=4242):
        self.fd = os.open(run_dir / rundir.LOCK_FILE, os.O_RDWR | os.O_CREAT)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        info = {"pid": pid, "host": "elsewhere", "command": "betavae train --out R", "since": "2025-01-01T00:00:00"}
        os.write(self.fd, json.dumps(info).encode())

    def close(self):
        os.close(self.fd)


def test_a_second_writer_is_refused_naming_the_holder(small_npy, tmp_path):
    run = betavae.train(_config(small_npy, tmp_path / "run"))
    assert not (run / rundir.LOCK_FILE).exists()  # a finished run leaves no lock behind
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
    other = _OtherWriter(run)
    try:
        for attempt in (lambda: betavae.resume(run, steps=20),
                        lambda: betavae.train(_config(small_npy, run)),
                        lambda: betavae.train(_config(small_npy, run, overwrite=True)),
                        lambda: betavae.train_many([_config(small_npy, tmp_path / "fresh"), _config(small_npy, run)]),
                        lambda: evaluate_run(run, metrics="mig")):
            with pytest.raises(RunInUseError, match=f"run directory {run} is in use by pid 4242 "
                                                    r"\(betavae train --out R, on elsewhere since"):
                attempt()
    finally:
        other.close()
    assert not (tmp_path / "fresh").exists()  # the group is refused before any directory is made
    after = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.name != rundir.LOCK_FILE}
    assert after == before  # nothing of the run was touched
    betavae.resume(run, steps=20)  # the holder is gone: the run is free again
    assert [r["step"] for r in read_metrics(run)] == [5, 10, 15, 20]


def test_the_lock_is_shared_by_its_thread_and_refused_to_others(tmp_path):
    first = rundir.lock(tmp_path)
    again = rundir.lock(tmp_path)  # the training loop drawing figures, then the report
    assert again is first
    errors = []

    def other_thread():
        try:
            rundir.lock(tmp_path)
        except RunInUseError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert errors and f"pid {os.getpid()}" in errors[0]
    again.release()
    assert (tmp_path / rundir.LOCK_FILE).exists()  # still held once
    first.release()
    assert not (tmp_path / rundir.LOCK_FILE).exists()
    rundir.lock(tmp_path).release()


def test_a_killed_holder_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom betavae.training import rundir\nrundir.lock(sys.argv[1])\n"
        "print('locked', flush=True)\ntime.sleep(120)"), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=f"in use by pid {holder.pid} "):
            rundir.lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / rundir.LOCK_FILE).exists()  # its lock file stays, but the kernel dropped the lock
    rundir.lock(tmp_path).release()


def test_train_then_resume_at_once_stops_the_second_with_exit_code_2(small_npy, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(_cli("train", "--data", small_npy, "--out", run, "--steps", 100000, "--batch-size", 16,
                                  "--latents", 3, "--log-every", 5, "--no-figures"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not read_metrics(run) and first.poll() is None:
            time.sleep(0.05)
        assert read_metrics(run), first.stderr.read() if first.poll() is not None else "no record in 120 s"
        for args in (("train", "--resume", run), ("train", "--data", small_npy, "--out", run, "--overwrite")):
            second = subprocess.run(_cli(*args), capture_output=True, text=True)
            assert second.returncode == 2
            assert second.stderr.startswith(f"betavae: error: run directory {run} is in use by pid {first.pid} (")
            assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on, undisturbed
    finally:
        first.kill()
        first.wait()
