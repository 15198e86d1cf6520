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


def test_nonfinite_steps_stop_or_are_skipped(small_npy, tmp_path, monkeypatch):
    from betavae.objectives.beta_vae import BetaVAE

    real_forward = BetaVAE.forward

    def poisoned(self, output, x, step):
        loss, logs = real_forward(self, output, x, step)
        return (loss * float("nan"), logs) if step in (12, 13) else (loss, logs)

    monkeypatch.setattr(BetaVAE, "forward", poisoned)
    with pytest.raises(TrainingError, match="NaN or infinite by step 15.*step-00000010, is kept"):
        betavae.train(_config(small_npy, tmp_path / "stop"))
    assert [p.name for p in list_checkpoints(tmp_path / "stop")] == ["step-00000010"]
    run = betavae.train(_config(small_npy, tmp_path / "skip", skip_nonfinite=2))
    assert (run / "model.safetensors").exists()
    with pytest.raises(TrainingError, match="more than 1 steps had NaN"):
        betavae.train(_config(small_npy, tmp_path / "toomany", skip_nonfinite=1))


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
