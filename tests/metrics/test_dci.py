import numpy as np
import pytest
from tests.metrics.conftest import FactorGrid, constant, identity

from betavae.errors import ConfigError
from betavae.metrics import DCI, dci, dci_from_codes
from betavae.metrics.dci import completeness, disentanglement

SIZES = (3, 4, 5)


def _factors(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in SIZES], axis=1)


def test_disentanglement_and_completeness_by_hand():
    assert disentanglement(np.eye(3)) == pytest.approx(1.0)
    assert completeness(np.eye(3)) == pytest.approx(1.0)
    assert disentanglement(np.ones((3, 3))) == pytest.approx(0.0, abs=1e-9)
    assert completeness(np.ones((3, 3))) == pytest.approx(0.0, abs=1e-9)
    # one code explains both factors equally (D_0 = 0, weight 1): D = 0; each factor is
    # explained by that one code of two (C_j = 1): C = 1
    r = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert disentanglement(r) == pytest.approx(0.0, abs=1e-9)
    assert completeness(r) == pytest.approx(1.0)
    # code 0 -> factor 0 only (D_0 = 1, weight 1/2); code 1 split evenly (D_1 = 0, weight 1/2)
    r = np.array([[2.0, 0.0], [1.0, 1.0]])
    assert disentanglement(r) == pytest.approx(0.5)
    # no importance at all: both 0
    assert disentanglement(np.zeros((2, 2))) == pytest.approx(0.0, abs=1e-9)


def test_identity_is_disentangled_complete_and_informative():
    train, test = _factors(400, 0), _factors(200, 1)
    result = dci_from_codes(train.astype(float), train, test.astype(float), test)
    assert result["disentanglement"] >= 0.9
    assert result["completeness"] >= 0.9
    assert result["informativeness_test"] == pytest.approx(1.0)


def test_constant_duplicated_and_rotated_codes_score_lower():
    train, test = _factors(400, 0), _factors(200, 1)
    flat = dci_from_codes(np.zeros((400, 3)), train, np.zeros((200, 3)), test)
    assert flat["disentanglement"] == pytest.approx(0.0, abs=1e-9) and flat["completeness"] == pytest.approx(0.0, abs=1e-9)
    doubled = dci_from_codes(np.concatenate([train, train], 1).astype(float), train,
                             np.concatenate([test, test], 1).astype(float), test)
    assert doubled["completeness"] < 0.85  # each factor's importance is shared by two codes
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))[0]
    rotated = dci_from_codes(train @ rotation, train, test @ rotation, test)
    assert rotated["disentanglement"] < 0.7


def test_sampling_layer_is_seeded_and_rejects_unknown_implementation():
    grid = FactorGrid(SIZES)
    first = dci(grid, identity, 1, num_train=300, num_test=150)
    assert first == dci(grid, identity, 1, num_train=300, num_test=150)
    assert all(0.0 <= v <= 1.0 for v in first.values())
    assert dci(grid, constant, 1, num_train=300, num_test=150)["disentanglement"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ConfigError, match="implementation"):
        DCI(implementation="lasso")


def test_both_implementations_agree_on_the_sampling_layer():
    grid = FactorGrid(SIZES)
    ours = dci(grid, identity, 3, num_train=300, num_test=150)
    oracle = dci(grid, identity, 3, num_train=300, num_test=150, implementation="scikit-learn")
    assert ours == pytest.approx(oracle, abs=0.01)
