"""Many models at once (betavae.train_many): each model of a group is the model betavae.train trains
from its config alone, up to float rounding; its run directory is an ordinary one.

Tolerances. The grouped convolutions and batched matrix products add up in another order than one
model's, so results agree to rounding, not bit for bit, and rounding differences can grow over steps:
a ReLU input within rounding of 0 may fall on the other side, and Adam divides each gradient
coordinate by its own running scale, so a coordinate whose gradient is at rounding level takes a step
of up to the learning rate in one run and not the other. The members below are ones where neither
happens in their first 20 steps on the reference machine (x86-64, AVX2, one thread); measured there:

* largest weight difference to the model trained alone, 64x64 dSprites, burgess, batch 16, lr 1e-3,
  20 steps: 1.07e-5, 3.7e-6, 9.2e-6 (β 1, 4, 16); beside other companions 4.6e-6; resumed alone to
  step 30: 3.9e-6; FactorVAE after 10 steps: 2.8e-5, 3.2e-6. TOLERANCE is 1e-4.
* logged loss, reconstruction and ELBO: at most 2e-7 relative (LOSS_RTOL 1e-5); KL and the weighted
  KL, small numbers: at most 6.1e-6 relative (KL_RTOL 1e-4).

A wrong batch, noise draw or weight moves the weights by about the learning rate per step (ten times
TOLERANCE per step here; the first test checks that two different models are far apart). Other
seeds in this setting (about 1 in 12 over 20 steps; seed 11 at β 4 crosses a ReLU boundary in its
first step) end 1e-3 to 1e-2 apart, as two machines would.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import betavae
from betavae.errors import ConfigError, TrainingError
from betavae.training.checkpoint import list_checkpoints, load_checkpoint
from betavae.training.logging import read_metrics
from betavae.training.parallel import train_group

TOLERANCE = 1e-4  # largest |weight difference| to the model trained alone (measured: 2.8e-5 at most)
LOSS_RTOL = 1e-5  # logged loss, reconstruction, ELBO (measured: 2e-7 at most)
KL_RTOL = 1e-4  # logged KL and weighted KL (measured: 6.1e-6 at most)
MEMBERS = [(1.0, 0), (4.0, 1), (16.0, 2)]  # (β, seed)
DROP = {"images_per_second", "elapsed_seconds"}


@pytest.fixture(scope="module")
def data(tmp_path_factory, small_images):
    path = tmp_path_factory.mktemp("data") / "small.npy"
    np.save(path, small_images)
    return path


def _config(data, out, beta, seed, **kw):
    values = dict(data=str(data), arch="burgess", steps=20, batch_size=16, lr=1e-3, latents=4, log_every=5,
                  checkpoint_every=10, figures=False, out=str(out), beta=beta, seed=seed)
    values.update(kw)
    return betavae.TrainConfig(**values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """The three models trained one by one with betavae.train, and together with betavae.train_many."""
    root = tmp_path_factory.mktemp("runs")
    alone = [betavae.train(_config(data, root / f"alone-{s}", b, s), stream=io.StringIO()) for b, s in MEMBERS]
    together = betavae.train_many([_config(data, root / f"together-{s}", b, s) for b, s in MEMBERS],
                                  stream=io.StringIO())
    return alone, together


def _max_weight_difference(a, b) -> float:
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys()
    return max(float((ta[k] - tb[k]).abs().max()) for k in ta)


def _assert_same_losses(a, b):
    ra, rb = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for key in ("loss", "reconstruction", "elbo"):
            assert y[key] == pytest.approx(x[key], rel=LOSS_RTOL), key
        for key in ("kl", "weighted_regulariser"):
            assert y[key] == pytest.approx(x[key], rel=KL_RTOL), key
        assert y.get("beta") == x.get("beta") and y["active_dims"] == x["active_dims"]


def test_each_model_matches_training_it_alone(trained):
    alone, together = trained
    for a, t in zip(alone, together):
        assert _max_weight_difference(a, t) <= TOLERANCE
        _assert_same_losses(a, t)
        assert (t / "diagnosis.json").is_file() and (t / "config.json").is_file()
        names = ["step-00000010", "step-00000020"]
        assert [p.name for p in list_checkpoints(t)] == [p.name for p in list_checkpoints(a)] == names
        config = betavae.TrainConfig.load(t)
        assert config.to_dict() == {**betavae.TrainConfig.load(a).to_dict(), "out": config.out}
    # the test has power: different models are far apart
    assert _max_weight_difference(alone[0], together[1]) > 100 * TOLERANCE


def test_checkpoints_are_those_of_a_model_trained_alone(trained):
    alone, together = trained
    for a, t in zip(alone, together):
        ca = load_checkpoint(list_checkpoints(a)[-1])
        ct = load_checkpoint(list_checkpoints(t)[-1])
        assert ca.keys() == ct.keys() and ca["step"] == ct["step"] == 20
        assert torch.equal(ca["generator"], ct["generator"])  # the same batches and noise were drawn
        assert ca["model_spec"] == ct["model_spec"] and ca["log_count"] == ct["log_count"]
        oa, ot = ca["optimizer"], ct["optimizer"]
        assert oa["param_groups"] == ot["param_groups"]
        assert oa["state"].keys() == ot["state"].keys()
        for i, state in oa["state"].items():
            assert state.keys() == ot["state"][i].keys()
            assert torch.equal(state["step"], ot["state"][i]["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                assert state[key].shape == ot["state"][i][key].shape
                # relative to the tensor's largest entry (measured: at most 7.5e-6)
                scale = float(state[key].abs().max())
                assert float((ot["state"][i][key] - state[key]).abs().max()) <= 1e-4 * scale


def test_one_model_of_a_group_resumes_alone(trained, tmp_path):
    alone, together = trained
    a, t = shutil.copytree(alone[1], tmp_path / "a"), shutil.copytree(together[1], tmp_path / "t")
    for run in (a, t):
        config = betavae.TrainConfig.load(run)
        config.out = str(run)
        config.save(run / "config.json")
        betavae.resume(run, steps=30, stream=io.StringIO())
    assert [r["step"] for r in read_metrics(t)] == [5, 10, 15, 20, 25, 30]
    assert _max_weight_difference(a, t) <= TOLERANCE
    _assert_same_losses(a, t)


def test_companions_do_not_change_a_model(trained, data, tmp_path):
    alone, together = trained
    beta, seed = MEMBERS[1]
    # other companions, one of them with another objective and likelihood
    runs = betavae.train_many([
        _config(data, tmp_path / "m", beta, seed),
        _config(data, tmp_path / "c", 0.0, 7, objective="tc", beta_schedule="constant", likelihood="gaussian"),
    ], stream=io.StringIO())
    assert _max_weight_difference(alone[1], runs[0]) <= TOLERANCE
    assert _max_weight_difference(together[1], runs[0]) <= TOLERANCE
    _assert_same_losses(alone[1], runs[0])


def test_factor_vae_members_train_their_own_discriminators(data, tmp_path):
    members = [(10.0, 0), (35.0, 1)]
    kw = dict(objective="factor", steps=10, checkpoint_every=10)
    alone = [betavae.train(_config(data, tmp_path / f"a{s}", 1.0, s, factor_gamma=g, **kw), stream=io.StringIO())
             for g, s in members]
    together = betavae.train_many([_config(data, tmp_path / f"t{s}", 1.0, s, factor_gamma=g, **kw) for g, s in members],
                                  stream=io.StringIO())
    for a, t in zip(alone, together):
        assert _max_weight_difference(a, t) <= TOLERANCE
        _assert_same_losses(a, t)
        da, dt = (load_checkpoint(list_checkpoints(r)[-1])["objective"] for r in (a, t))
        assert da.keys() == dt.keys()
        assert max(float((da[k] - dt[k]).abs().max()) for k in da) <= TOLERANCE


def test_a_time_limit_stops_the_group_as_one(data, tmp_path):
    # a limit shorter than one step: every model stops after its first, as betavae.train would
    configs = [_config(data, tmp_path / f"t{s}", b, s, time_limit=1e-6, steps=50) for b, s in MEMBERS[:2]]
    streams = [io.StringIO(), io.StringIO()]
    runs = train_group(configs, streams)
    for run, stream in zip(runs, streams):
        assert [r["step"] for r in read_metrics(run)] == [1]
        assert [p.name for p in list_checkpoints(run)] == ["step-00000001"]
        assert load_checkpoint(list_checkpoints(run)[0])["elapsed_seconds"] > 0
        assert (run / "model.safetensors").is_file() and "stopped at step 1 of 50" in stream.getvalue()
    betavae.resume(runs[0], steps=3, time_limit=10.0, stream=io.StringIO())  # one of them goes on alone
    assert [r["step"] for r in read_metrics(runs[0])] == [1, 3]


def test_a_model_whose_loss_turns_nan_stops_alone(trained, data, tmp_path):
    alone, _ = trained
    beta, seed = MEMBERS[0]
    nan = dict(likelihood="gaussian", likelihood_scale=1e-30)  # the NLL overflows float32 at once
    configs = [_config(data, tmp_path / "bad", 4.0, 5, **nan), _config(data, tmp_path / "good", beta, seed)]
    outcomes = train_group(configs, [io.StringIO(), io.StringIO()])
    assert isinstance(outcomes[0], TrainingError) and "NaN or infinite by step 5" in str(outcomes[0])
    assert not (tmp_path / "bad" / "model.safetensors").exists()
    assert outcomes[1] == tmp_path / "good"
    assert _max_weight_difference(alone[0], outcomes[1]) <= TOLERANCE
    with pytest.raises(TrainingError, match=r"1 of 2 models failed: .*bad2: the loss or the weights became NaN"):
        betavae.train_many([_config(data, tmp_path / "bad2", 4.0, 5, steps=5, **nan),
                            _config(data, tmp_path / "good2", beta, seed, steps=5)], stream=io.StringIO())
    assert (tmp_path / "good2" / "model.safetensors").is_file()


@pytest.mark.parametrize("change, message", [
    ({"arch": "locatello"}, "must share arch, got 'burgess', 'locatello'"),
    ({"lr": 1e-4}, "must share lr"),
    ({"lr_schedule": "cosine"}, "must share lr_schedule, got 'constant', 'cosine'"),
    ({"steps": 30}, "must share steps"),
    ({"time_limit": 5.0}, "must share time_limit, got 5.0, None"),
    ({"skip_nonfinite": 3}, "skip_nonfinite \\(3\\) skips one model's bad step"),
    ({"out": "SAME"}, "both write to"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
])
def test_models_that_cannot_train_together_are_refused(data, tmp_path, change, message):
    first = _config(data, tmp_path / "SAME", 1.0, 0)
    second = _config(data, tmp_path / "second", 4.0, 1)
    for key, value in change.items():
        setattr(second, key, str(tmp_path / value) if key == "out" else value)
    with pytest.raises(ConfigError, match=message):
        betavae.train_many([first, second], stream=io.StringIO())
    assert not (tmp_path / "SAME").exists() and not (tmp_path / "second").exists()


def test_an_existing_directory_is_refused_before_any_is_made(data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    configs = [_config(data, tmp_path / "new", 1.0, 0), _config(data, tmp_path / "mine", 4.0, 1, overwrite=True)]
    with pytest.raises(ConfigError, match="not a betavae run directory"):
        betavae.train_many(configs, stream=io.StringIO())
    assert not (tmp_path / "new").exists() and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="no configs to train"):
        betavae.train_many([])


def test_bf16_autocast_trains_together_as_alone(data, tmp_path):
    # bfloat16 keeps 8 significant bits, so the models agree to bf16 rounding (first-step losses measured
    # 1.3e-4 relative apart), not to the fp32 tolerance above
    kw = dict(steps=3, log_every=1, precision="bf16")
    alone = betavae.train(_config(data, tmp_path / "a", 4.0, 1, **kw), stream=io.StringIO())
    configs = [_config(data, tmp_path / "t", 4.0, 1, **kw), _config(data, tmp_path / "c", 1.0, 0, **kw)]
    runs = betavae.train_many(configs, stream=io.StringIO())
    first_alone, first_together = read_metrics(alone)[0], read_metrics(runs[0])[0]
    assert first_together["loss"] == pytest.approx(first_alone["loss"], rel=1e-3)
    assert first_together["kl"] == pytest.approx(first_alone["kl"], rel=1e-2)
    assert _max_weight_difference(alone, runs[0]) < 2e-2  # a few bf16-rounded Adam steps of lr 1e-3
