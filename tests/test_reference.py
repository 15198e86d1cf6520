"""The shipped reference models load and still score what their stored evaluation says."""

import json

import pytest

from betavae import reference
from betavae.data import dataset_from_config
from betavae.errors import ConfigError
from betavae.metrics import evaluate
from betavae.metrics.run import encoder_fn
from betavae.training import TrainConfig

# Metrics re-computed in the test: the cheap part of the suite (the full suite encodes ~720,000 images).
CHEAP_METRICS = ("mig", "sap")
# Codes computed on another CPU may differ by float rounding, which can move a code across a histogram
# bin edge (MIG) or a threshold of the SAP classifiers: far below the differences between models.
TOLERANCE = 0.005

SHIPPED = reference.names()


def test_the_recipes_reference_models_are_shipped():
    assert {"dsprites-fast-cpu", "dsprites-beta4"} <= set(SHIPPED)
    assert reference.DEMO_REFERENCE in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_reference_model_reproduces_its_stored_evaluation(name):
    folder = reference.path(name)
    stored = reference.evaluation(name)
    info = reference.info(name)
    for key in ("summary", "command", "steps", "train_minutes", "hardware"):
        assert key in info
    config = TrainConfig.load(folder)
    model = reference.load(name)
    assert sum(p.numel() for p in model.parameters()) * 4 < 8 * 2**20  # a few MB, as shipped
    assert (folder / "figures" / "traversals.png").is_file()
    dataset = dataset_from_config(config)
    params = {m: stored["metrics"][m]["parameters"] for m in CHEAP_METRICS}
    again = evaluate(encoder_fn(model), dataset, ",".join(CHEAP_METRICS), stored["seed"], params=params)
    for metric in CHEAP_METRICS:
        for measure, value in stored["metrics"][metric]["values"].items():
            assert again[metric][measure] == pytest.approx(value, abs=TOLERANCE), (name, metric, measure)
    # what the README and the demo quote is what the stored evaluation holds
    assert json.loads((folder / "evaluation.json").read_text()) == stored


def test_unknown_reference_and_copy_never_overwrites(tmp_path):
    with pytest.raises(ConfigError, match="unknown reference model 'nope'"):
        reference.path("nope")
    copied = reference.copy(reference.DEMO_REFERENCE, tmp_path / "mine")
    assert (copied / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="already exists"):
        reference.copy(reference.DEMO_REFERENCE, copied)


def test_shipped_models_are_read_only():
    folder = reference.path(reference.DEMO_REFERENCE)
    import betavae
    from betavae.metrics import evaluate_run

    with pytest.raises(ConfigError, match="shipped reference model.*betavae reference --copy"):
        evaluate_run(folder, metrics="mig")
    with pytest.raises(ConfigError, match="shipped reference model"):
        betavae.resume(folder, steps=10**6)
