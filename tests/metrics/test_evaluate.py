import dataclasses
import inspect
import math

import numpy as np
import pytest
from tests.metrics.conftest import Counting, FactorGrid, PosteriorEncoder, Unlabelled, constant, identity, labelled_subset

from betavae.errors import ConfigError, DataError
from betavae.metrics import (METRIC_TYPES, METRICS, evaluate, evaluate_with_details, format_table, metric_rng,
                             resolve_metrics)

SIZES = (3, 4, 5, 6)
#: Small sample counts for every metric, so the whole suite runs in seconds.
SMALL = {
    "beta_vae_score": {"num_train": 100, "num_eval": 60, "group_size": 8},
    "factor_vae_score": {"num_train": 100, "num_eval": 60, "num_variance_estimate": 300, "group_size": 8},
    "mig": {"num_train": 400},
    "sap": {"num_train": 300, "num_test": 150},
    "dci": {"num_train": 300, "num_test": 150},
    "modularity_explicitness": {"num_train": 300, "num_test": 150},
    "unsupervised": {"num_train": 300},
}


def nonlinear(images: np.ndarray) -> np.ndarray:
    """A fixed, mildly entangled encoder that works row by row (element-wise maths only)."""
    x = images.reshape(len(images), -1).astype(np.float64)
    mixed = np.stack([x[:, 0] + 0.3 * x[:, 1], np.tanh(x[:, 1] - 2), np.sin(x[:, 2]) + x[:, 3], x[:, 3] * 0.5, x[:, 0] * 0], 1)
    return mixed


def test_registry_entries_resolve_and_run():
    assert set(METRICS) == set(METRIC_TYPES) == set(SMALL)
    grid = FactorGrid(SIZES)
    for name, function in METRICS.items():
        assert function.__name__ == name and METRIC_TYPES[name].name == name
        values = function(grid, identity, 0, **SMALL[name], batch_size=256)
        assert values and all(isinstance(v, float) and math.isfinite(v) for v in values.values())


def test_sampling_functions_default_to_the_protocol_parameters():
    for name, function in METRICS.items():
        defaults = METRIC_TYPES[name]()
        signature = inspect.signature(function).parameters
        for field in dataclasses.fields(defaults):
            assert signature[field.name].default == getattr(defaults, field.name), (name, field.name)
    assert METRIC_TYPES["beta_vae_score"]().num_train == 10_000 and METRIC_TYPES["mig"]().num_bins == 20


@pytest.mark.parametrize("encode", [nonlinear, PosteriorEncoder(SIZES)])
def test_cached_equals_encoding_every_sample_afresh(encode):
    grid = FactorGrid(SIZES)
    cached = evaluate_with_details(encode, grid, seed=3, params=SMALL, batch_size=128)
    naive = evaluate_with_details(encode, grid, seed=3, params=SMALL, batch_size=128, cache=False)
    assert cached.values == naive.values  # exact equality, not approximate
    assert cached.images_requested == naive.images_requested == naive.images_encoded
    assert cached.images_encoded < naive.images_encoded


def test_each_distinct_image_is_encoded_once():
    grid = FactorGrid(SIZES)
    counting = Counting(identity)
    details = evaluate_with_details(counting, grid, seed=0, params=SMALL, batch_size=100)
    rows = [grid.factors_to_index(call.astype(np.int64)) for call in counting.calls]
    per_call = [np.unique(r) for r in rows]
    distinct = np.concatenate(per_call)
    assert len(distinct) == len(np.unique(distinct)) == details.images_encoded  # no image in two passes
    assert all(len(r) == 100 for r in rows)  # every pass has one shape (the last is padded)
    assert len(rows) == math.ceil(details.images_encoded / 100)
    assert details.images_encoded <= len(grid) < details.images_requested


def test_same_seed_same_values_and_metrics_do_not_depend_on_each_other():
    grid = FactorGrid(SIZES)
    first = evaluate(nonlinear, grid, seed=11, params=SMALL)
    assert first == evaluate(nonlinear, grid, seed=11, params=SMALL)
    assert first["mig"] != evaluate(nonlinear, grid, "mig", seed=12, params=SMALL)["mig"]
    assert evaluate(nonlinear, grid, ["mig"], seed=11, params=SMALL)["mig"] == first["mig"]
    alone = METRICS["sap"](grid, nonlinear, metric_rng(11, "sap"), **SMALL["sap"])
    assert alone == first["sap"]


def test_values_lie_in_their_ranges():
    results = evaluate(nonlinear, FactorGrid(SIZES), seed=4, params=SMALL)
    unbounded = {"gaussian_total_correlation", "gaussian_wasserstein_correlation", "mutual_info_score",
                 "gaussian_wasserstein_correlation_norm",
                 "active_units", "num_active_dims"}
    for metric, values in results.items():
        for key, value in values.items():
            assert value >= 0.0, (metric, key)
            if key not in unbounded:
                assert value <= 1.0, (metric, key)
    assert results["factor_vae_score"]["num_active_dims"] <= 5 and results["unsupervised"]["active_units"] <= 5


def test_identity_scores_high_and_constant_low_through_evaluate():
    grid = FactorGrid(SIZES)
    good, bad = evaluate(identity, grid, params=SMALL), evaluate(constant, grid, params=SMALL)
    assert good["beta_vae_score"]["eval_accuracy"] == 1.0 and good["factor_vae_score"]["eval_accuracy"] == 1.0
    assert good["mig"]["mig"] > 0.8 and bad["mig"]["mig"] == 0.0
    assert good["modularity_explicitness"]["modularity"] > 0.9 and bad["modularity_explicitness"]["modularity"] == 0.0
    assert bad["factor_vae_score"]["eval_accuracy"] == 0.0 and bad["sap"]["sap"] == 0.0


def test_labelled_data_that_is_not_a_grid():
    dataset = labelled_subset()
    assert not dataset.is_full_grid
    cached = evaluate(identity, dataset, seed=1, params=SMALL)
    assert cached == evaluate(identity, dataset, seed=1, params=SMALL, cache=False)
    assert cached["beta_vae_score"]["eval_accuracy"] == 1.0 and cached["factor_vae_score"]["eval_accuracy"] == 1.0
    assert cached["mig"]["mig"] > 0.8


def test_metric_selection():
    grid, unlabelled = FactorGrid(SIZES), Unlabelled()
    assert resolve_metrics("all", grid) == list(METRICS)
    assert resolve_metrics("mig, dci,mig", grid) == ["mig", "dci"]
    assert resolve_metrics("all", unlabelled) == ["unsupervised"]
    assert list(evaluate(identity, unlabelled, params=SMALL)) == ["unsupervised"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"metrics": "mig,entropy"}, ConfigError, "unknown metric"),
        ({"metrics": []}, ConfigError, "no metric"),
        ({"metrics": "mig", "params": {"mig": {"num_samples": 5}}}, ConfigError, "unknown parameter"),
        ({"metrics": "mig", "params": {"migg": {}}}, ConfigError, "unknown metric"),
        ({"metrics": "mig", "params": {"mig": {"num_train": 0}}}, ConfigError, "at least 1"),
        ({"metrics": "mig", "batch_size": 0}, ConfigError, "batch_size"),
    ],
)
def test_bad_arguments_raise_config_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        evaluate(identity, FactorGrid(SIZES), **kwargs)


def test_bad_data_raises_data_errors_before_encoding():
    counting = Counting(identity)
    with pytest.raises(DataError, match="needs ground-truth factors"):
        evaluate(counting, Unlabelled(), "mig,unsupervised")
    assert counting.calls == []
    with pytest.raises(DataError, match="NaN"):
        evaluate(lambda x: np.full((len(x), 3), np.nan), FactorGrid(SIZES), "mig", params=SMALL)
    with pytest.raises(DataError, match="one row per image"):
        evaluate(lambda x: identity(x)[:-1], FactorGrid(SIZES), "mig", params=SMALL)


def test_format_table_lists_every_value():
    results = evaluate(identity, FactorGrid(SIZES), "mig,unsupervised", params=SMALL)
    table = format_table(results)
    assert "mig" in table and "active_units" in table and f"{results['mig']['mig']:.4f}" in table
    wrapped = {"metrics": {name: {"values": values} for name, values in results.items()}}
    assert format_table(wrapped) == table
