"""``betavae sweep --parallel K``: a worker claims up to K trials and trains the new ones together; a
half-trained trial is resumed alone, a trial that fails fails alone, and a rerun repeats nothing."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest

import betavae
from betavae.cli import main
from betavae.sweep import SweepSpec
from betavae.training.logging import read_metrics
from tests.sweep.conftest import tiny_args


def _states(out) -> dict[str, str]:
    study = optuna.load_study(study_name=f"betavae-sweep-{out.name}", storage=f"sqlite:///{out / 'study.db'}")
    return {f"{t.params['weight']:g}/{t.params['seed']}": t.state.name for t in study.get_trials()}


def _log(out, name: str) -> str:
    return (out / "logs" / f"{name}.log").read_text()


def test_parallel_sweep_trains_claimed_trials_together(toy_npz, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(tiny_args(toy_npz, out, "--parallel", "3")) == 0
    err = capsys.readouterr().err
    assert "starting beta-beta1-seed0 (trial 0), beta-beta1-seed1 (trial 1), beta-beta4-seed0 (trial 2) together" in err
    assert _states(out) == {"1/0": "COMPLETE", "1/1": "COMPLETE", "4/0": "COMPLETE", "4/1": "COMPLETE"}
    together = "training 3 trials together in one process: beta-beta1-seed0, beta-beta1-seed1, beta-beta4-seed0"
    for name in ("beta-beta1-seed0", "beta-beta1-seed1", "beta-beta4-seed0"):
        assert together in _log(out, name) and "one of 3 models trained together" in _log(out, name)
    assert "together" not in _log(out, "beta-beta4-seed1")  # the fourth trial, claimed alone
    for run in (out / "trials").iterdir():  # ordinary run directories, whatever way they were trained
        assert [r["step"] for r in read_metrics(run)] == [2, 4] and (run / "model.safetensors").is_file()
        assert betavae.TrainConfig.load(run).seed == int(run.name[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert all(t["state"] == "COMPLETE" and "mig.mig" in t["metrics"] for t in summary["trials"])

    # --parallel says how trials run, not what they are: the same study takes workers with any value
    key = SweepSpec(out=str(out), weights=[1.0], seeds=[0], parallel=3).comparison_key()
    assert key == SweepSpec(out=str(out), weights=[1.0], seeds=[0]).comparison_key()


def test_half_trained_trial_resumes_alone_and_a_failure_stays_its_own(toy_npz, tmp_path, capsys):
    out = tmp_path / "sweep"
    base = {"data": str(toy_npz), "arch": "mlp", "latents": 3, "batch_size": 16, "steps": 4, "log_every": 2,
            "checkpoint_every": 2, "figures": False, "device": "cpu"}
    spec = SweepSpec(out=str(out), weights=[1.0, 4.0], seeds=[0, 1], base=base)
    # a trial killed after its step-2 checkpoint: its run directory holds config, metrics and that checkpoint
    with open(tmp_path / "first.log", "w") as log:
        half = betavae.train(spec.trial_config(4.0, 1), stream=log)
    (half / "model.safetensors").unlink()
    shutil.rmtree(half / "checkpoints" / "step-00000004")
    # a directory the sweep may not write: that trial fails alone, with betavae.train's message
    foreign = out / "trials" / "beta-beta1-seed0"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")

    assert main(tiny_args(toy_npz, out, "--parallel", "4")) == 0
    err = capsys.readouterr().err
    assert "beta-beta1-seed0 failed: run directory" in err and "already exists" in err
    assert _states(out) == {"1/0": "FAIL", "1/1": "COMPLETE", "4/0": "COMPLETE", "4/1": "COMPLETE"}
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    assert "resuming" in _log(out, "beta-beta4-seed1") and "together" not in _log(out, "beta-beta4-seed1")
    assert [r["step"] for r in read_metrics(half)] == [2, 4]  # resumed from step 2, not restarted
    for name in ("beta-beta1-seed1", "beta-beta4-seed0"):
        assert "training 2 trials together in one process: beta-beta1-seed1, beta-beta4-seed0" in _log(out, name)
    summary = json.loads((out / "summary.json").read_text())
    failed = [t for t in summary["trials"] if t["state"] == "FAIL"]
    assert len(failed) == 1 and "already exists" in failed[0]["error"]


@pytest.mark.parametrize("extra, message", [
    (["--parallel", "2", "--skip-nonfinite", "1"], "--skip-nonfinite skips one model's bad steps"),
    (["--parallel", "2", "--compile", "on"], "compiles one model's forward pass"),
])
def test_what_cannot_train_together_is_refused_before_any_work(toy_npz, tmp_path, capsys, extra, message):
    assert main(tiny_args(toy_npz, tmp_path / "s", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("betavae: error:") and message in err and "\n" not in err
    assert not (tmp_path / "s" / "trials").exists()


def test_parallel_must_be_positive(toy_npz, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args(toy_npz, tmp_path / "s", "--parallel", "0"))
    assert exit_info.value.code == 2 and "--parallel: must be a whole number >= 1" in capsys.readouterr().err


def test_a_recipe_sets_every_trials_config_but_the_swept_weight(toy_npz, tmp_path, monkeypatch):
    import betavae.sweep

    seen = []
    monkeypatch.setattr(betavae.sweep, "run_sweep", seen.append)
    assert main(tiny_args(toy_npz, tmp_path / "s", "--recipe", "fast-cpu", "--parallel", "2")) == 0
    (spec,) = seen
    # fast-cpu: tc, β 10, width 16, lr 1e-3 (cosine), batch 64, 8000 steps, 30 minutes; the flags given win
    assert spec.objective == "tc" and spec.weights == [1.0, 4.0] and spec.parallel == 2
    assert {k: spec.base[k] for k in ("recipe", "width", "lr", "time_limit", "steps", "batch_size")} == {
        "recipe": "fast-cpu", "width": 16, "lr": 1e-3, "time_limit": 30.0, "steps": 4, "batch_size": 16}
    assert "beta" not in spec.base
    assert spec.trial_config(4.0, 1).beta == 4.0
