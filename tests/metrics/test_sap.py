import numpy as np
import pytest
from tests.metrics.conftest import FactorGrid, constant, identity

from betavae.errors import DataError
from betavae.metrics import sap, sap_from_codes
from betavae.metrics.sap import sap_score_matrix


def _split(sizes, n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1)


SIZES = (3, 6, 10, 8)


def test_each_factors_best_code_is_its_own_for_the_identity():
    train, test = _split(SIZES, 2_000, 0), _split(SIZES, 1_000, 1)
    scores = sap_score_matrix(train.astype(float), train, test.astype(float), test)
    assert scores.shape == (4, 4)
    assert np.array_equal(np.argmax(scores, axis=0), np.arange(4))
    assert np.all((scores >= 0) & (scores <= 1))
    assert sap_from_codes(train.astype(float), train, test.astype(float), test)["sap"] > 0.1


def test_constant_and_duplicated_codes_score_zero():
    train, test = _split(SIZES, 1_000, 0), _split(SIZES, 500, 1)
    assert sap_from_codes(np.zeros((1_000, 4)), train, np.zeros((500, 4)), test)["sap"] == 0.0
    doubled_train = np.concatenate([train, train], axis=1).astype(float)
    doubled_test = np.concatenate([test, test], axis=1).astype(float)
    assert sap_from_codes(doubled_train, train, doubled_test, test)["sap"] == pytest.approx(0.0)


def test_continuous_variant_by_hand():
    # z0 = y exactly (R² = 1), z1 independent of y (R² ≈ 0 by construction: zero covariance)
    y = np.array([[0], [1], [2], [3]])
    codes = np.array([[0.0, 1.0], [1.0, -1.0], [2.0, -1.0], [3.0, 1.0]])
    scores = sap_score_matrix(codes, y, codes, y, continuous=True)
    assert scores[:, 0] == pytest.approx([1.0, 0.0])
    assert sap_from_codes(codes, y, codes, y, continuous=True)["sap"] == pytest.approx(1.0)


def test_sampling_layer_is_seeded_and_bounded():
    grid = FactorGrid(SIZES)
    first = sap(grid, identity, 3, num_train=800, num_test=400)
    assert first == sap(grid, identity, 3, num_train=800, num_test=400)
    assert 0.0 <= first["sap"] <= 1.0
    assert sap(grid, constant, 3, num_train=800, num_test=400)["sap"] == 0.0


def test_train_and_test_widths_must_match():
    train = _split(SIZES, 100, 0)
    with pytest.raises(DataError, match="different widths"):
        sap_from_codes(np.zeros((100, 4)), train, np.zeros((100, 3)), train)
