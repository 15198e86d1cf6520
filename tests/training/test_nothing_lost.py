"""Kills, full disks, NaNs and malformed files never cost the user their work."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import betavae
from betavae.errors import CheckpointError, TrainingError
from betavae.training.checkpoint import list_checkpoints, load_checkpoint
from betavae.training.logging import read_metrics

STEPS = 60
ARGS = ["--steps", str(STEPS), "--batch-size", "16", "--latents", "3", "--lr", "1e-3", "--log-every", "5",
        "--checkpoint-every", "10", "--no-figures"]


def _cli(*args):
    return [sys.executable, "-m", "betavae", *map(str, args)]


def _same_weights(a, b):
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _metrics_without_timing(run):
    drop = {"images_per_second", "elapsed_seconds"}
    return [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(run)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, small_images):
    import numpy as np

    root = tmp_path_factory.mktemp("reference")
    data = root / "small.npy"
    np.save(data, small_images)
    out = root / "run"
    subprocess.run(_cli("train", "--data", data, "--out", out, *ARGS), check=True, capture_output=True)
    return data, out


@pytest.mark.parametrize("kill_after_records", [1, 3, 6, 9])
def test_sigkill_at_any_step_then_resume_is_bitwise_identical(reference_run, tmp_path, kill_after_records):
    data, reference = reference_run
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli("train", "--data", data, "--out", out, *ARGS),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(read_metrics(out)) >= kill_after_records:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before it could be killed"
    result = subprocess.run(_cli("train", "--resume", out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert _same_weights(out, reference)
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == list(range(5, STEPS + 1, 5))  # no duplicated or missing steps
    assert _metrics_without_timing(out) == _metrics_without_timing(reference)


KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    import betavae.training.checkpoint as ckpt
    from betavae.cli import main
    mode, kill_step = sys.argv[1], int(sys.argv[2])
    real_bytes, real_json = ckpt.write_bytes_atomic, ckpt.write_json_atomic

    def write_bytes(path, data):
        if mode == "tensors" and f"step-{kill_step:08d}" in str(path.parent):
            with open(str(path) + ".partial", "wb") as f:  # half a file on disk, then the kill
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_bytes(path, data)

    def write_json(path, value):
        if mode == "state" and f"step-{kill_step:08d}" in str(path.parent):
            os.kill(os.getpid(), signal.SIGKILL)  # tensors written, state not yet
        real_json(path, value)

    ckpt.write_bytes_atomic, ckpt.write_json_atomic = write_bytes, write_json
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("mode", ["tensors", "state"])
def test_sigkill_during_a_checkpoint_write(reference_run, tmp_path, mode):
    data, reference = reference_run
    out = tmp_path / "run"
    script = tmp_path / "kill.py"
    script.write_text(KILL_DURING_WRITE)
    proc = subprocess.run([sys.executable, str(script), mode, "30", "train", "--data", str(data), "--out", str(out),
                           *ARGS], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out)] == ["step-00000010", "step-00000020"]  # intact, usable
    assert load_checkpoint(list_checkpoints(out)[-1])["step"] == 20
    result = subprocess.run(_cli("train", "--resume", out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert _same_weights(out, reference)
    assert not list((out / "checkpoints").glob(".tmp-*"))


def _config(data, out, **kw):
    values = dict(data=str(data), steps=40, batch_size=16, latents=3, lr=1e-3, log_every=5, checkpoint_every=10,
                  out=str(out), figures=False)
    values.update(kw)
    return betavae.TrainConfig(**values)


def test_full_disk_stops_with_a_message_and_keeps_the_last_checkpoint(small_npy, tmp_path, monkeypatch):
    import betavae.training.checkpoint as ckpt

    real = ckpt.write_bytes_atomic

    def failing(path, data):
        if "step-00000020" in str(path.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(ckpt, "write_bytes_atomic", failing)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="No space left on device.*step-00000010, is intact"):
        betavae.train(_config(small_npy, out))
    assert [p.name for p in list_checkpoints(out)] == ["step-00000010"]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(ckpt, "write_bytes_atomic", real)
    betavae.resume(out)
    assert (out / "model.safetensors").exists()


def test_nonfinite_steps_stop_or_are_skipped(small_npy, tmp_path, monkeypatch, capsys):
    from betavae.objectives.beta_vae import BetaVAE

    real_forward = BetaVAE.forward

    def poisoned(self, output, x, step):
        loss, logs = real_forward(self, output, x, step)
        return (loss * float("nan"), logs) if step in (12, 13) else (loss, logs)

    monkeypatch.setattr(BetaVAE, "forward", poisoned)
    with pytest.raises(TrainingError, match="NaN or infinite by step 15.*step-00000010, is kept") as stopped:
        betavae.train(_config(small_npy, tmp_path / "stop"))
    assert "--likelihood-scale" not in str(stopped.value)  # the Bernoulli likelihood has no scale to blame
    assert [p.name for p in list_checkpoints(tmp_path / "stop")] == ["step-00000010"]
    with pytest.raises(TrainingError, match="likelihood scale too small \\(--likelihood-scale 0.1\\)"):
        betavae.train(_config(small_npy, tmp_path / "gaussian", likelihood="gaussian"))
    run = betavae.train(_config(small_npy, tmp_path / "skip", skip_nonfinite=2))
    assert (run / "model.safetensors").exists()
    capsys.readouterr()
    with pytest.raises(TrainingError, match="more than 1 steps had NaN"):
        betavae.train(_config(small_npy, tmp_path / "toomany", skip_nonfinite=1))
    err = capsys.readouterr().err
    assert "(1 of at most 1)" in err and "(2 of at most 1)" not in err


def test_checkpoint_with_wrong_shapes_is_refused(small_npy, tmp_path):
    run = betavae.train(_config(small_npy, tmp_path / "run", steps=10))
    tensors = load_file(run / "model.safetensors")
    key = next(iter(tensors))
    tensors[key] = torch.zeros(3, 3)
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(run / "model.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match=f"'{key}' has shape \\(3, 3\\)"):
        betavae.load(run)
    save_file({"x": torch.zeros(1)}, str(run / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model description"):
        betavae.load(run)


def test_resume_skips_a_damaged_newest_checkpoint(small_npy, tmp_path):
    run = betavae.train(_config(small_npy, tmp_path / "run", steps=30))
    reference = betavae.train(_config(small_npy, tmp_path / "ref", steps=40))
    newest = list_checkpoints(run)[-1]
    (newest / "tensors.safetensors").write_bytes(b"garbage")
    (run / "model.safetensors").unlink()
    betavae.resume(run, steps=40)
    assert _same_weights(run, reference)
    assert json.loads((run / "config.json").read_text())["steps"] == 40


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_images):
    """A 30-step run with checkpoints at steps 10, 20 and 30, and the same run trained straight to 40 steps."""
    import numpy as np

    root = tmp_path_factory.mktemp("finished")
    data = root / "small.npy"
    np.save(data, small_images)
    return (data, betavae.train(_config(data, root / "run", steps=30)),
            betavae.train(_config(data, root / "reference", steps=40)))


def _copy(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run")


def _contents(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "tensors.safetensors").write_bytes(b"garbage"), "not a readable safetensors file"),
    (lambda p: (p / "state.json").write_text('{"format": 2, "step": 1, "state": {}}'),
     "format 2, written by a newer betavae"),
])
def test_resume_refuses_a_run_whose_checkpoints_all_fail_to_load(finished_run, tmp_path, damage, reason, capsys):
    from betavae.cli import main

    run = _copy(finished_run[1], tmp_path)
    for checkpoint in list_checkpoints(run):
        damage(checkpoint)
    before = _contents(run)
    assert main(["train", "--resume", str(run), "--steps", "40"]) == 2
    err = capsys.readouterr().err
    assert f"betavae: error: {run} has 3 checkpoint(s) and none can be loaded, so it is not resumed" in err
    assert reason in err and "Traceback" not in err
    assert _contents(run) == before  # metrics, model and checkpoints as they were


def _edit_state(checkpoint, edit):
    meta = json.loads((checkpoint / "state.json").read_text())
    edit(meta)
    (checkpoint / "state.json").write_text(json.dumps(meta))


def _drop_entry(name):
    return lambda meta: meta["state"].update(__dict__=[kv for kv in meta["state"]["__dict__"] if kv[0] != name])


@pytest.mark.parametrize("edit", [
    lambda meta: meta.update(state=5),
    lambda meta: meta["state"]["__dict__"].append(["step"]),  # a pair missing its value
    _drop_entry("optimizer"),
    lambda meta: meta["state"].update(__dict__=[[k, "x" if k == "log_count" else v] for k, v in meta["state"]["__dict__"]]),
    lambda meta: meta["state"].update(__dict__=[[k, 11 if k == "step" else v] for k, v in meta["state"]["__dict__"]]),
], ids=["not-an-object", "broken-pair", "no-optimizer", "wrong-type", "wrong-step"])
def test_a_malformed_newest_state_falls_back_to_an_older_checkpoint(finished_run, tmp_path, edit, capsys):
    _, finished, reference = finished_run
    run = _copy(finished, tmp_path)
    (run / "model.safetensors").unlink()
    _edit_state(list_checkpoints(run)[-1], edit)
    betavae.resume(run, steps=40)
    assert f"skipping damaged checkpoint {list_checkpoints(run)[-1].parent / 'step-00000030'}" in capsys.readouterr().err
    assert _same_weights(run, reference)
    assert _metrics_without_timing(run) == _metrics_without_timing(reference)


@pytest.mark.parametrize("changes, named", [
    ({"lr": 2e-3, "beta": 8.0}, "beta 4.0 -> 8.0, lr 0.001 -> 0.002"),
    ({"objective": "tc"}, "objective 'beta' -> 'tc'"),
    ({"data": "elsewhere.npy"}, "data "),
])
def test_resume_refuses_a_changed_config_naming_the_changes(finished_run, tmp_path, changes, named, capsys):
    from betavae.cli import main

    run = _copy(finished_run[1], tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **changes}))
    before = _contents(run)
    assert main(["train", "--resume", str(run), "--steps", "40"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"betavae: error: {run / 'config.json'} differs from the config its checkpoint of step 30 "
                          f"was trained with: {named}")
    assert _contents(run) == before


def test_resume_accepts_changes_to_how_a_run_reports_and_saves(finished_run, tmp_path):
    _, finished, reference = finished_run
    run = _copy(finished, tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "keep_checkpoints": 5, "collapse_threshold": 0.2}))
    betavae.resume(run, steps=40)
    assert _same_weights(run, reference)
    assert len(list_checkpoints(run)) == 4


def test_resume_refuses_a_finished_run_without_checkpoints(finished_run, tmp_path):
    import shutil

    run = _copy(finished_run[1], tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = _contents(run)
    with pytest.raises(CheckpointError, match="holds a final model but no checkpoint"):
        betavae.resume(run, steps=40)
    assert _contents(run) == before


@pytest.mark.parametrize("command", [["report"], ["evaluate", "--metrics", "mig"], ["traverse"], ["train", "--resume"]])
def test_a_config_with_wrong_value_types_is_a_clear_error(finished_run, tmp_path, command, capsys):
    from betavae.cli import main
    from betavae.report.explorer import Explorer

    run = _copy(finished_run[1], tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "latents": "3"}))
    assert main([*command, str(run)]) == 2
    assert capsys.readouterr().err.startswith(f"betavae: error: {run / 'config.json'}: latents must be of type int, "
                                              "got '3' (str)")
    with pytest.raises(CheckpointError, match="latents must be of type int"):
        Explorer(run)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failed write() raises it: no file name


def test_full_disk_at_the_final_model_names_the_last_checkpoint_and_resume_finishes(finished_run, tmp_path,
                                                                                   monkeypatch, capsys):
    import betavae.training.loop as loop
    from betavae.cli import main

    data, _, reference = finished_run
    run = tmp_path / "run"
    monkeypatch.setattr(loop, "write_bytes_atomic", _no_space)
    args = ["train", "--data", data, "--out", run, "--steps", 40, "--batch-size", 16, "--latents", 3, "--lr", 1e-3,
            "--log-every", 5, "--checkpoint-every", 10, "--no-figures"]
    assert main(list(map(str, args))) == 2
    err = capsys.readouterr().err
    assert f"betavae: error: could not write {run} (No space left on device); the last good checkpoint, " \
           f"{run / 'checkpoints' / 'step-00000040'}, is intact. Free disk space" in err
    assert "Traceback" not in err and not (run / "model.safetensors").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0  # finishes from the final checkpoint, training no step
    assert _same_weights(run, reference)
    assert _metrics_without_timing(run) == _metrics_without_timing(reference)


def test_full_disk_while_drawing_figures_keeps_every_earlier_file(finished_run, tmp_path, monkeypatch):
    import contextlib

    import betavae.report.figures as figures

    data, finished, _ = finished_run
    run = _copy(finished, tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "figures": True}))  # a value a resume may change
    old_model = (run / "model.safetensors").read_bytes()
    real = figures.atomic_output

    @contextlib.contextmanager
    def failing(path):
        if path.name == "traversals.gif":
            _no_space()
        with real(path) as tmp:
            yield tmp

    monkeypatch.setattr(figures, "atomic_output", failing)
    with pytest.raises(TrainingError, match=r"could not write .*No space left on device.*step-00000040, is intact"):
        betavae.resume(run, steps=40)  # trains further, then the disk fills
    assert (run / "model.safetensors").read_bytes() == old_model  # the step-30 model, not lost
    assert (run / "figures" / "reconstructions.png").exists()
    monkeypatch.undo()
    betavae.resume(run)  # finishes: figures, then the step-40 model
    assert (run / "figures" / "traversals.gif").exists() and (run / "report.html").exists()
    assert _same_weights(run, finished_run[2])
    with pytest.raises(betavae.errors.ConfigError, match="already reached step 40 of 40"):
        betavae.resume(run)


def test_full_disk_while_logging_stops_cleanly_and_resumes_to_the_same_result(finished_run, tmp_path, monkeypatch):
    from betavae.training.logging import TrainingLog

    data, _, reference = finished_run
    real = TrainingLog.write

    def write(self, record):
        if record["step"] == 25:
            _no_space()
        real(self, record)

    monkeypatch.setattr(TrainingLog, "write", write)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"No space left on device\); the last good checkpoint, .*step-00000020, "
                                            "is intact"):
        betavae.train(_config(data, run))
    monkeypatch.undo()
    betavae.resume(run)
    assert _same_weights(run, reference)
    assert _metrics_without_timing(run) == _metrics_without_timing(reference)


def test_directories_are_synced_after_every_rename(tmp_path, monkeypatch):
    from betavae.files import write_json_atomic
    from betavae.training.checkpoint import save_checkpoint

    events = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(path):
            events.append(("sync", path))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", os.path.dirname(b))), real_replace(a, b)))
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", os.path.dirname(b))), real_rename(a, b)))
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    save_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(2)})
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    assert len(renames) == 4  # a.json, the checkpoint's two files, the checkpoint itself
    for i in renames:
        assert events[i + 1] == ("sync", events[i][1])


def test_resume_moves_lines_that_are_no_record_aside_instead_of_dropping_them(small_npy, tmp_path, capsys):
    import json

    from betavae.training.rundir import DAMAGED_METRICS_FILE

    run = betavae.train(_config(small_npy, tmp_path / "run", steps=20))
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    edited = json.dumps({**json.loads(lines[0]), "note": "a string betavae does not write"})
    cut = lines[-1][: len(lines[-1]) // 2]  # a line cut by a kill during a write
    path.write_text("\n".join([edited, *lines[1:], cut]) + "\n")
    capsys.readouterr()
    betavae.resume(run, steps=30)
    assert "2 line(s) of" in capsys.readouterr().err
    assert (run / DAMAGED_METRICS_FILE).read_text().splitlines() == [edited, cut]
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 30 and json.loads(lines[0])["step"] not in steps
    betavae.resume(run, steps=40)  # nothing damaged: nothing more moved, nothing said
    assert "line(s) of" not in capsys.readouterr().err
    assert (run / DAMAGED_METRICS_FILE).read_text().splitlines() == [edited, cut]
