import io
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import betavae
from betavae.errors import CheckpointError, ConfigError
from betavae.objectives.likelihoods import reconstruction_nll
from betavae.training.checkpoint import list_checkpoints, load_checkpoint
from betavae.training.logging import read_metrics

CORE_KEYS = {"step", "reconstruction", "kl", "weighted_regulariser", "loss", "elbo", "kl_per_dim", "active_dims", "beta",
             "images_per_second"}


def _config(small_npy, out, **kw):
    values = dict(data=str(small_npy), steps=40, batch_size=16, lr=1e-3, latents=4, log_every=10,
                  checkpoint_every=20, out=str(out), figures=False)
    values.update(kw)
    return betavae.TrainConfig(**values)


def test_training_loss_falls_and_logs_every_term(small_npy, tmp_path):
    run = betavae.train(_config(small_npy, tmp_path / "run", steps=150, log_every=25, checkpoint_every=75))
    records = read_metrics(run)
    assert [r["step"] for r in records] == [25, 50, 75, 100, 125, 150]
    assert CORE_KEYS <= set(records[0])
    assert records[-1]["loss"] < 0.6 * records[0]["loss"]
    for r in records:
        assert len(r["kl_per_dim"]) == 4
        assert r["kl"] == pytest.approx(sum(r["kl_per_dim"]), rel=1e-4)
        assert r["weighted_regulariser"] == pytest.approx(4.0 * r["kl"], rel=1e-4)
        assert r["loss"] == pytest.approx(r["reconstruction"] + r["weighted_regulariser"], rel=1e-4)
    assert json.loads((run / "config.json").read_text())["steps"] == 150
    diagnosis = json.loads((run / "diagnosis.json").read_text())
    assert diagnosis["findings"] and diagnosis["kl_per_dim"] == records[-1]["kl_per_dim"]
    assert any((run / "tensorboard").iterdir())
    assert [p.name for p in list_checkpoints(run)] == ["step-00000075", "step-00000150"]


def test_same_seed_same_model_and_load(small_npy, tmp_path):
    a = betavae.train(_config(small_npy, tmp_path / "a"))
    b = betavae.train(_config(small_npy, tmp_path / "b"))
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    model = betavae.load(a)
    assert not model.training and model.latents == 4
    mu, _ = model.encode(torch.zeros(2, 1, 64, 64))
    assert mu.shape == (2, 4)


@pytest.mark.parametrize("decoder_init", ["default", "data"])
def test_resume_continues_to_the_same_result(small_npy, tmp_path, decoder_init):
    straight = betavae.train(_config(small_npy, tmp_path / "straight", decoder_init=decoder_init))
    part = betavae.train(_config(small_npy, tmp_path / "part", steps=20, decoder_init=decoder_init))
    betavae.resume(part, steps=40)
    ta, tb = load_file(straight / "model.safetensors"), load_file(part / "model.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    steps = [r["step"] for r in read_metrics(part)]
    assert steps == [10, 20, 30, 40]
    drop = {"images_per_second", "elapsed_seconds"}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert strip(read_metrics(part)) == strip(read_metrics(straight))


def test_learning_rate_schedules():
    constant = betavae.TrainConfig(lr=1e-3, steps=100)
    assert [constant.learning_rate(s) for s in (0, 50, 99)] == [1e-3] * 3
    cosine = betavae.TrainConfig(lr=1e-3, steps=100, lr_schedule="cosine")
    assert cosine.learning_rate(0) == 1e-3
    assert cosine.learning_rate(50) == pytest.approx(5e-4, rel=1e-12)  # half-way: half the rate
    assert cosine.learning_rate(25) == pytest.approx(0.5e-3 * (1 + 2**-0.5), rel=1e-12)  # cos(π/4)
    assert cosine.learning_rate(100) == pytest.approx(0.0, abs=1e-18)
    assert cosine.learning_rate(250) == pytest.approx(0.0, abs=1e-18)  # past --steps it stays at 0
    with pytest.raises(ConfigError, match="unknown lr_schedule 'step'; choose one of: constant, cosine"):
        betavae.TrainConfig(lr_schedule="step").validate()
    # the decay over the last fifth only: held at --lr for 80 steps, then the same half cosine over 20
    tail = betavae.TrainConfig(lr=1e-3, steps=100, lr_schedule="cosine", lr_decay_fraction=0.2)
    assert [tail.learning_rate(s) for s in (0, 40, 79, 80)] == [1e-3] * 4
    assert tail.learning_rate(90) == pytest.approx(5e-4, rel=1e-12)  # half-way through the decay
    assert tail.learning_rate(85) == pytest.approx(0.5e-3 * (1 + 2**-0.5), rel=1e-12)
    assert tail.learning_rate(100) == pytest.approx(0.0, abs=1e-18) and tail.learning_rate(300) == pytest.approx(0.0, abs=1e-18)
    whole = betavae.TrainConfig(lr=1e-3, steps=100, lr_schedule="cosine", lr_decay_fraction=1.0)
    assert [whole.learning_rate(s) for s in range(101)] == [cosine.learning_rate(s) for s in range(101)]
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"lr_decay_fraction must be in \(0, 1\]"):
            betavae.TrainConfig(lr_schedule="cosine", lr_decay_fraction=bad).validate()
    with pytest.raises(ConfigError, match="--lr-decay-fraction applies to --lr-schedule cosine only"):
        betavae.TrainConfig(lr_decay_fraction=0.2).validate()
    # a linear warm-up scales either schedule over its first steps, then leaves it as it was
    warm = betavae.TrainConfig(lr=1e-3, steps=100, lr_schedule="cosine", lr_decay_fraction=0.2, lr_warmup_steps=10)
    assert [warm.learning_rate(s) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3], rel=1e-12)
    assert [warm.learning_rate(s) for s in range(10, 101)] == [tail.learning_rate(s) for s in range(10, 101)]
    warm_constant = betavae.TrainConfig(lr=1e-3, steps=100, lr_warmup_steps=4)
    assert [warm_constant.learning_rate(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    with pytest.raises(ConfigError, match=r"lr_warmup_steps must be a whole number >= 0 \(0: no warm-up\), got -1"):
        betavae.TrainConfig(steps=100, lr_warmup_steps=-1).validate()
    short = betavae.TrainConfig(lr=1e-3, steps=2, lr_warmup_steps=4)  # a run shorter than its warm-up
    assert short.validate() is short and short.learning_rate(1) == pytest.approx(5e-4)


def _resumed_from_step(straight, step, copy):
    """``straight``'s run copied as if killed after its checkpoint of ``step``, resumed; asserts the same weights."""
    killed = shutil.copytree(straight, copy)
    (killed / "model.safetensors").unlink()
    for path in list_checkpoints(killed):
        if load_checkpoint(path)["step"] > step:
            shutil.rmtree(path)
    betavae.resume(killed)
    ta, tb = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    return killed


def test_cosine_schedule_steps_adam_and_resumes_to_the_same_result(small_npy, tmp_path):
    config = _config(small_npy, tmp_path / "straight", lr_schedule="cosine")
    straight = betavae.train(config)
    records = read_metrics(straight)
    assert [r["lr"] for r in records] == pytest.approx([config.learning_rate(s - 1) for s in (10, 20, 30, 40)])
    assert records[0]["lr"] > records[1]["lr"] > records[2]["lr"] > records[3]["lr"] > 0
    final = load_checkpoint(list_checkpoints(straight)[-1])
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(config.learning_rate(39))
    # killed after the checkpoint of step 20: the resumed run takes the schedule up where it was
    killed = _resumed_from_step(straight, 20, tmp_path / "killed")
    drop = {"images_per_second", "elapsed_seconds"}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert strip(read_metrics(killed)) == strip(records)


def test_resuming_a_cosine_run_with_more_steps_says_the_rate_jumps_back(small_npy, tmp_path):
    # held to step 32 of 40, then decayed to 0 at step 40; laid over 80 steps it is held to step 64
    config = _config(small_npy, tmp_path / "run", lr_schedule="cosine", lr_decay_fraction=0.2)
    run = betavae.train(config)
    assert config.learning_rate(40) == 0.0
    out = io.StringIO()
    betavae.resume(run, steps=80, stream=out)
    assert "at step 40 the learning rate goes from 0 to 0.001" in out.getvalue()
    records = read_metrics(run)
    assert records[-1]["step"] == 80 and records[4]["lr"] == pytest.approx(1e-3)
    # a constant rate does not move, so nothing is said
    plain = betavae.train(_config(small_npy, tmp_path / "plain"))
    out = io.StringIO()
    betavae.resume(plain, steps=60, stream=out)
    assert "schedules" not in out.getvalue()


def test_existing_run_directory_is_never_touched(small_npy, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        betavae.train(_config(small_npy, out))
    with pytest.raises(ConfigError, match="not a betavae run directory"):
        betavae.train(_config(small_npy, out, overwrite=True))
    assert (out / "notes.txt").read_text() == "keep me"


def test_nan_stops_training_and_keeps_the_last_checkpoint(small_npy, tmp_path):
    # An absurd learning rate drives the loss to NaN/inf within a few steps.
    with pytest.raises(betavae.errors.TrainingError, match="NaN or infinite"):
        betavae.train(_config(small_npy, tmp_path / "nan", lr=1e12, steps=200))
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    from betavae.training.checkpoint import save_checkpoint

    state = {"step": 3, "opt": {"state": {0: {"exp_avg": torch.ones(2)}}, "betas": (0.9, 0.999)}, "x": [1, None]}
    path = save_checkpoint(tmp_path, 3, state)
    loaded = load_checkpoint(path)
    assert loaded["opt"]["state"][0]["exp_avg"].tolist() == [1.0, 1.0]
    assert loaded["opt"]["betas"] == (0.9, 0.999) and loaded["x"] == [1, None]
    import pickle

    (path / "tensors.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="never loads pickled"):
        load_checkpoint(path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_load_refuses_malformed_models(small_npy, tmp_path):
    run = betavae.train(_config(small_npy, tmp_path / "run", steps=10))
    good = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        betavae.load(run)
    (run / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has not finished"):
        betavae.load(run)
    config = json.loads((run / "config.json").read_text())
    config["mystery"] = 1
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown config keys"):
        betavae.TrainConfig.load(run)


def test_reconstruction_baseline_is_the_constant_image_nll():
    from betavae.data import ArrayDataset
    from betavae.training.diagnostics import reconstruction_baseline

    images = np.zeros((4, 1, 32, 32), np.float32)
    images[:2] = 1.0  # each pixel is 1 in half the images: the best constant is 0.5
    baseline = reconstruction_baseline(ArrayDataset(images), "bernoulli", 0.1, np.random.default_rng(0))
    assert baseline == pytest.approx(32 * 32 * np.log(2), rel=1e-4)


def test_restored_adam_moments_take_their_weights_memory_layout():
    from betavae.training.loop import load_optimizer_state, make_adam

    def train(restore_at):
        weight = torch.nn.Parameter(torch.arange(48.0).reshape(4, 3, 2, 2).to(memory_format=torch.channels_last))
        optimizer = make_adam([weight], 0.1, weight.device)  # fused on the CPU
        grads = torch.Generator().manual_seed(0)
        for step in range(3):
            if step == restore_at:  # as from a checkpoint: every tensor contiguous
                saved = optimizer.state_dict()
                saved["state"] = {i: {k: v.contiguous() for k, v in s.items()} for i, s in saved["state"].items()}
                optimizer = make_adam([weight], 0.1, weight.device)
                load_optimizer_state(optimizer, saved)
                assert optimizer.state[weight]["exp_avg"].stride() == weight.stride()
            weight.grad = torch.randn(4, 3, 2, 2, generator=grads).contiguous(memory_format=torch.channels_last)
            optimizer.step()
        return weight.detach()

    assert torch.equal(train(restore_at=None), train(restore_at=1))


def test_data_initialised_decoder_starts_at_the_constant_image(small_npy, tmp_path):
    from betavae.data import dataset_from_config
    from betavae.models import model_from_spec, model_spec
    from betavae.training.loop import initialise

    config = betavae.TrainConfig(data=str(small_npy), latents=3, decoder_init="data", out=str(tmp_path / "run"))
    dataset = dataset_from_config(config)
    torch.manual_seed(0)
    model = model_from_spec(model_spec(config.arch, config.latents, dataset.image_shape, config.width))
    x = torch.from_numpy(dataset.images(np.arange(len(dataset))))  # all 512 images: the mean is exact
    with torch.no_grad():
        untouched = float(reconstruction_nll(model.decode(model.encode(x)[0]), x).mean())
        initialise(model, config, dataset)
        started = float(reconstruction_nll(model.decode(model.encode(x)[0]), x).mean())
    # the conv decoder has one output bias: the best single grey level, the mean pixel
    mean_pixel = float(x.mean())
    constant = float(reconstruction_nll(torch.full_like(x, np.log(mean_pixel / (1 - mean_pixel))), x).mean())
    assert started == pytest.approx(constant, rel=0.01)  # the initial weights add almost nothing
    assert untouched > 2.5 * constant  # PyTorch's init draws grey: about log 2 nats a pixel


def test_a_checkpoint_older_than_a_config_field_resumes_with_its_default(tmp_path):
    from betavae.training import rundir

    config = betavae.TrainConfig(out=str(tmp_path / "run"))
    record = rundir.config_record(config)
    del record["config"]["decoder_init"]  # written before the field existed
    record["config_sha256"] = "older"
    rundir.check_unchanged({**record, "step": 10}, config, tmp_path)  # the default: nothing changed
    with pytest.raises(ConfigError, match="decoder_init 'default' -> 'data'"):
        rundir.check_unchanged({**record, "step": 10}, betavae.TrainConfig(out=str(tmp_path / "run"),
                                                                           decoder_init="data"), tmp_path)


def test_a_tc_memory_run_resumes_to_the_same_result(small_npy, tmp_path):
    """The memory of earlier posteriors is checkpointed: a run resumed mid-way ends where a straight one does."""
    config = _config(small_npy, tmp_path / "straight", objective="tc", tc_memory=24)
    straight = betavae.train(config)
    _resumed_from_step(straight, 20, tmp_path / "killed")
    ta = load_file(straight / "model.safetensors")
    plain = betavae.train(_config(small_npy, tmp_path / "plain", objective="tc"))  # the memory changes training
    tc = load_file(plain / "model.safetensors")
    assert not all(torch.equal(ta[k], tc[k]) for k in ta)
