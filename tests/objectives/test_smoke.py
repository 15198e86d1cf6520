"""Every objective, end to end through the CLI: trains with every likelihood, logs its terms, and
resumes from a checkpoint to exactly the model an uninterrupted run reaches."""

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

import betavae
from betavae.cli import main
from betavae.objectives import LIKELIHOODS, OBJECTIVES
from betavae.training.checkpoint import list_checkpoints
from betavae.training.config import TrainConfig
from betavae.training.logging import read_metrics

CORE_KEYS = {"reconstruction", "kl", "kl_per_dim", "loss", "elbo", "weighted_regulariser"}
OWN_KEYS = {
    "beta": {"beta"},
    "capacity": {"capacity", "capacity_gap"},
    "factor": {"total_correlation", "discriminator_accuracy", "discriminator_loss"},
    "tc": {"mutual_information", "total_correlation", "dimension_wise_kl"},
    "dip1": {"dip_penalty", "covariance_off_diagonal", "covariance_diagonal"},
    "dip2": {"dip_penalty", "covariance_off_diagonal", "covariance_diagonal"},
}
LATENTS = 3


def _train_args(small_npy, out, objective, *extra, steps=4):
    return ["train", "--data", str(small_npy), "--objective", objective, "--steps", str(steps), "--batch-size", "16",
            "--latents", str(LATENTS), "--lr", "1e-3", "--log-every", "2", "--checkpoint-every", "2",
            "--no-figures", "--out", str(out), *extra]


def test_registry_lists_every_objective_and_each_builds():
    assert set(OBJECTIVES) == set(OWN_KEYS)
    for name, cls in OBJECTIVES.items():
        objective = cls.from_config(TrainConfig(objective=name).validate(), dataset_size=1000)
        assert objective.name == name and objective.weight_label()


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("objective", list(OWN_KEYS))
def test_every_objective_trains_with_every_likelihood(objective, likelihood, small_npy, tmp_path):
    assert main(_train_args(small_npy, tmp_path / "run", objective, "--likelihood", likelihood)) == 0
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert CORE_KEYS | OWN_KEYS[objective] <= set(r)
        assert all(math.isfinite(v) for k, v in r.items() if k not in ("kl_per_dim", "events"))
        assert len(r["kl_per_dim"]) == LATENTS and all(math.isfinite(v) for v in r["kl_per_dim"])
        assert r["kl"] == pytest.approx(sum(r["kl_per_dim"]), rel=1e-4, abs=1e-6)
        assert r["loss"] == pytest.approx(r["reconstruction"] + r["weighted_regulariser"], rel=1e-4)
        assert r["elbo"] == pytest.approx(-(r["reconstruction"] + r["kl"]), rel=1e-4)


@pytest.mark.parametrize("objective,extra", [
    ("beta", ()),
    ("beta", ("--beta-schedule", "cyclical", "--beta-cycles", "2")),
    ("capacity", ("--capacity-steps", "3")),
    ("factor", ()),
    ("tc", ("--estimator", "mss")),
    ("tc", ("--estimator", "mws")),
    ("dip1", ()),
    ("dip2", ()),
])
def test_every_objective_resumes_after_a_kill_to_the_same_model(objective, extra, small_npy, tmp_path):
    straight = tmp_path / "straight"
    assert main(_train_args(small_npy, straight, objective, *extra)) == 0
    # The same run, killed after its step-2 checkpoint: no final model, no later checkpoint.
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    (killed / "model.safetensors").unlink()
    shutil.rmtree(list_checkpoints(killed)[-1])
    assert [p.name for p in list_checkpoints(killed)] == ["step-00000002"]
    betavae.resume(killed)
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = {"images_per_second", "elapsed_seconds"}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert strip(read_metrics(killed)) == strip(read_metrics(straight))
