import json

import pytest
import torch
from safetensors import safe_open

import betavae
from betavae.cli import build_parser, config_from_args
from betavae.errors import ConfigError
from betavae.training.logging import read_metrics
from betavae.training.config import recipe_config
from betavae.training.recipes import RECIPES, recipe_values


def _args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_a_recipe_fills_its_fields_and_explicit_flags_win():
    config = config_from_args(_args("--recipe", "fast-cpu"))
    assert config.recipe == "fast-cpu"
    for key, value in RECIPES["fast-cpu"].values.items():
        assert getattr(config, key) == value
    overridden = config_from_args(_args("--recipe", "fast-cpu", "--beta", "3", "--seed", "5"))
    assert overridden.beta == 3.0 and overridden.seed == 5 and overridden.objective == "tc"
    assert config_from_args(_args()).recipe is None  # no recipe: the plain defaults
    assert config_from_args(_args()).beta == betavae.TrainConfig().beta


def test_every_recipe_is_a_valid_config():
    for name in RECIPES:
        config = recipe_config(name)
        config.validate()
        assert config.recipe == name


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown recipe 'fastest'.*fast-cpu"):
        recipe_values("fastest")
    with pytest.raises(ConfigError, match="unknown recipe"):
        betavae.TrainConfig(recipe="fastest").validate()


def test_time_limit_stops_early_and_a_resume_needs_a_larger_one(small_npy, tmp_path):
    config = betavae.TrainConfig(data=str(small_npy), steps=100000, batch_size=16, lr=1e-3, latents=4, log_every=5,
                                 checkpoint_every=1000, out=str(tmp_path / "run"), figures=False, time_limit=0.02)
    run = betavae.train(config)
    records = read_metrics(run)
    first_stop = records[-1]["step"]
    assert 0 < first_stop < 100000
    assert 1.2 <= records[-1]["elapsed_seconds"] < 30  # stopped at 1.2 s of training (plus the step that crossed it)
    assert (run / "model.safetensors").is_file() and (run / "diagnosis.json").is_file()
    with pytest.raises(ConfigError, match="time limit"):
        betavae.resume(run)
    betavae.resume(run, time_limit=0.04)
    records = read_metrics(run)
    assert records[-1]["step"] > first_stop
    assert 2.4 <= records[-1]["elapsed_seconds"] < 60  # the clock goes on across the resume
    assert json.loads((run / "config.json").read_text())["time_limit"] == 0.04


def test_time_limit_must_be_positive():
    with pytest.raises(ConfigError, match="time_limit"):
        betavae.TrainConfig(time_limit=0.0).validate()


def test_width_is_trained_saved_and_loaded(small_npy, tmp_path):
    config = betavae.TrainConfig(data=str(small_npy), steps=4, batch_size=8, latents=3, log_every=2, width=8,
                                 checkpoint_every=4, out=str(tmp_path / "run"), figures=False)
    run = betavae.train(config)
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["betavae_model"])["width"] == 8
    model = betavae.load(run)
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)][0] == 8
    with pytest.raises(ConfigError, match="fixed published widths"):
        betavae.TrainConfig(arch="locatello", width=8).validate()
