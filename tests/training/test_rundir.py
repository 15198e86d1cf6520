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


def _train_cli(data, out, *extra):
    from betavae.cli import main

    return main(["train", "--data", str(data), "--out", str(out), "--steps", "2", "--batch-size", "16", "--latents", "3",
                 "--log-every", "1", "--no-figures", *map(str, extra)])


def test_overwrite_keeps_a_folder_that_merely_holds_a_config_json(small_npy, tmp_path, capsys):
    project = tmp_path / "p"
    (project / "src").mkdir(parents=True)
    (project / "src" / "code.py").write_text("keep me")
    (project / "config.json").write_text("{}")  # loads and validates: all defaults
    assert _train_cli(small_npy, project, "--overwrite") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"betavae: error: {project} is not a betavae run directory (it holds what betavae does not "
                          "write: src)")
    assert (project / "src" / "code.py").read_text() == "keep me"
    assert (project / "config.json").read_text() == "{}"
    assert not (project / rundir.LOCK_FILE).exists()


@pytest.mark.parametrize("config, reason", [("{not json", "not valid JSON"), ('{"steps": "2"}', "steps must be of type int"),
                                            ('{"lr": -1}', "lr must be a finite number > 0"), ("[]", "config object")])
def test_overwrite_keeps_a_run_whose_config_is_not_valid(small_npy, tmp_path, capsys, config, reason):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(config)
    (run / "metrics.jsonl").write_text("precious\n")
    assert _train_cli(small_npy, run, "--overwrite") == 2
    assert reason in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == "precious\n" and (run / "config.json").read_text() == config


def test_overwrite_never_goes_through_a_link(small_npy, tmp_path, capsys):
    run = betavae.train(_config(small_npy, tmp_path / "run", steps=2))
    files = sorted(p.relative_to(run) for p in run.rglob("*"))
    link = tmp_path / "link"
    link.symlink_to(run)
    assert _train_cli(small_npy, link, "--overwrite") == 2
    assert "it is a symbolic link" in capsys.readouterr().err
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "photo.png").write_text("keep me")
    (run / "figures").symlink_to(outside)
    assert _train_cli(small_npy, run, "--overwrite") == 2
    assert "it holds what betavae does not write: figures" in capsys.readouterr().err
    (run / "figures").unlink()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == files
    assert (outside / "photo.png").read_text() == "keep me"


def test_overwrite_never_replaces_a_shipped_reference_model(small_npy, tmp_path, monkeypatch, capsys):
    import shutil

    from betavae.training import rundir

    shipped = tmp_path / "reference"  # a copy stands in for the installed folder, so no test can harm it
    shutil.copytree(rundir.REFERENCE_ROOT / "dsprites-beta4", shipped / "dsprites-beta4")
    monkeypatch.setattr(rundir, "REFERENCE_ROOT", shipped)
    before = sorted(p.relative_to(shipped) for p in shipped.rglob("*"))
    assert _train_cli(small_npy, shipped / "dsprites-beta4", "--overwrite") == 2
    assert "is a shipped reference model and is kept as shipped" in capsys.readouterr().err
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*")) == before


def test_overwrite_replaces_a_run_betavae_wrote(small_npy, tmp_path):
    run = betavae.train(_config(small_npy, tmp_path / "run", steps=4, figures=True))
    (run / ".metrics.jsonl.123.tmp").write_text("")  # what kills leave behind
    (run / "checkpoints" / ".tmp-step-00000006-123").mkdir()
    (run / "evaluation.json").write_text("{}")
    betavae.train(_config(small_npy, run, steps=2, seed=1, overwrite=True))
    assert betavae.TrainConfig.load(run).seed == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    assert not (run / "evaluation.json").exists() and not (run / ".metrics.jsonl.123.tmp").exists()
    assert [r["step"] for r in read_metrics(run)] == [2]


def test_a_relative_data_path_is_saved_absolute_so_the_run_reads_the_same_data_from_anywhere(small_npy, tmp_path,
                                                                                              monkeypatch):
    from betavae.data import dataset_from_config
    from betavae.training import TrainConfig

    monkeypatch.chdir(small_npy.parent)
    run = betavae.train(_config(small_npy.name, tmp_path / "run", steps=5))
    assert json.loads((run / "config.json").read_text())["data"] == str(small_npy)
    # elsewhere, a file of the same relative name holds other images: the run still reads its own
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    import numpy as np

    np.save(elsewhere / small_npy.name, np.zeros((20, 1, 32, 32), np.float32))
    monkeypatch.chdir(elsewhere)
    assert len(dataset_from_config(TrainConfig.load(run))) == len(np.load(small_npy))
    betavae.resume(run, steps=10)
    assert [r["step"] for r in read_metrics(run)][-1] == 10


def test_a_run_path_that_is_a_file_is_named_a_file(tmp_path):
    from betavae.errors import CheckpointError
    from betavae.training import TrainConfig

    notes = tmp_path / "c7"
    notes.write_text("hi\n")
    with pytest.raises(CheckpointError, match="c7 is a file, not a betavae run directory"):
        TrainConfig.load(notes)
    with pytest.raises(CheckpointError, match="c7 is a file, not a betavae run directory"):
        evaluate_run(notes, metrics="mig")


def test_a_model_older_than_the_newest_checkpoint_is_said_so_by_evaluate_and_report(small_npy, tmp_path, capsys):
    import shutil

    from betavae.data import dataset_from_config
    from betavae.report.run_report import run_report
    from betavae.training import TrainConfig
    from betavae.training.loop import behind_checkpoint

    run = betavae.train(_config(small_npy, tmp_path / "run", steps=10))
    assert behind_checkpoint(run) is None
    # a resume to step 40 stopped after its checkpoint of step 20, before the final model was written
    shutil.copytree(run / "checkpoints" / "step-00000010", run / "checkpoints" / "step-00000020")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "steps": 40}))
    assert behind_checkpoint(run) == (10, 20)
    capsys.readouterr()
    evaluate_run(run, metrics="unsupervised")
    assert "model.safetensors is of step 10, but training went on to a checkpoint of step 20" in capsys.readouterr().err
    html = run_report(run, betavae.load(run), dataset_from_config(TrainConfig.load(run))).read_text()
    assert "trained for 10 of its 40 steps" in html and "betavae train --resume" in html
