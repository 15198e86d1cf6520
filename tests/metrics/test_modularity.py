import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tests.metrics.conftest import FactorGrid, constant, identity

from betavae.metrics import modularity_explicitness, modularity_explicitness_from_codes
from betavae.metrics.modularity import modularity, roc_auc

SIZES = (3, 6, 10, 8)


def _factors(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in SIZES], axis=1)


def test_modularity_by_hand():
    # code 0 informs one factor only: δ = 0. Code 1: m = (2, 1), δ = 1² / (2² · 1) = 0.25.
    # Code 2 carries nothing: 0.
    m = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 0.0]])
    assert modularity(m) == pytest.approx((1.0 + 0.75 + 0.0) / 3)


def test_identity_is_modular_and_explicit_constant_is_neither():
    train, test = _factors(3_000, 0), _factors(1_500, 1)
    good = modularity_explicitness_from_codes(train.astype(float), train, test.astype(float), test)
    assert good["modularity"] > 0.98
    assert good["explicitness_test"] > 0.85
    flat = modularity_explicitness_from_codes(np.zeros((3_000, 4)), train, np.zeros((1_500, 4)), test)
    assert flat == {"modularity": 0.0, "explicitness_train": 0.5, "explicitness_test": 0.5}


def test_mixed_codes_are_less_modular():
    train, test = _factors(3_000, 0), _factors(1_500, 1)
    codes = train / (np.asarray(SIZES) - 1.0)
    mixed = codes @ np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))[0]
    test_codes = (test / (np.asarray(SIZES) - 1.0)) @ np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))[0]
    value = modularity_explicitness_from_codes(mixed, train, test_codes, test)["modularity"]
    assert value < 0.9


def test_sampling_layer_is_seeded_and_bounded():
    grid = FactorGrid(SIZES)
    first = modularity_explicitness(grid, identity, 5, num_train=1_000, num_test=500)
    assert first == modularity_explicitness(grid, identity, 5, num_train=1_000, num_test=500)
    assert all(0.0 <= v <= 1.0 for v in first.values())
    assert modularity_explicitness(grid, constant, 5, num_train=1_000, num_test=500)["modularity"] == 0.0


def test_roc_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # coarse scores: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(np.array([False, True]), np.array([0.0, 1.0])) == 1.0
