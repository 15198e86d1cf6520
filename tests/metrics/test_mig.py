import numpy as np
import pytest
from tests.metrics.conftest import DSPRITES_SIZES, FactorGrid, PosteriorEncoder, identity

from betavae.errors import ConfigError, DataError
from betavae.metrics import MIG, mig, mig_chen_from_posterior, mig_from_codes


def _factors(n, sizes=DSPRITES_SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1)


def test_identity_on_dsprites_factor_sizes_scores_about_0_9():
    # shape and scale keep all their information in 20 bins; orientation (40 values) and posX/posY
    # (32) lose some, hence about 0.9 rather than 1
    factors = _factors(10_000)
    value = mig_from_codes(factors.astype(float), factors)["mig"]
    assert 0.85 < value < 0.95


def test_hand_computed_binary_case():
    # code 0 copies factor 0 exactly (MI = H = log 2); code 1 is constant (MI = 0): MIG = 1
    factors = np.array([[0], [1], [0], [1]])
    codes = np.array([[0.0, 5.0], [1.0, 5.0], [0.0, 5.0], [1.0, 5.0]])
    assert mig_from_codes(codes, factors)["mig"] == pytest.approx(1.0)
    # a single code has no second best: the gap is its own normalised information
    assert mig_from_codes(codes[:, :1], factors)["mig"] == pytest.approx(1.0)


def test_constant_duplicated_and_rotated_codes_score_lower():
    factors = _factors(5_000)
    codes = factors / (np.asarray(DSPRITES_SIZES) - 1.0)
    assert mig_from_codes(np.zeros((5_000, 5)), factors)["mig"] == 0.0
    assert mig_from_codes(np.concatenate([codes, codes], axis=1), factors)["mig"] == pytest.approx(0.0, abs=1e-12)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))[0]
    rotated = mig_from_codes(codes @ rotation, factors)["mig"]
    assert rotated < 0.5 * mig_from_codes(codes, factors)["mig"]


def test_sampling_layer_identity_range_and_seed():
    grid = FactorGrid()
    first = mig(grid, identity, 7, num_train=3_000)
    assert first == mig(grid, identity, np.random.default_rng(7), num_train=3_000)
    assert 0.85 < first["mig"] <= 1.0
    assert first != mig(grid, identity, 8, num_train=3_000)


def test_bad_inputs():
    with pytest.raises(DataError, match="different lengths"):
        mig_from_codes(np.zeros((10, 2)), np.zeros((11, 1), int))
    with pytest.raises(DataError, match="single value"):
        mig_from_codes(np.random.default_rng(0).random((10, 2)), np.zeros((10, 1), int))
    with pytest.raises(ConfigError, match="variant"):
        MIG(variant="original")
    with pytest.raises(ConfigError, match="posterior"):
        mig(FactorGrid((3, 4)), identity, variant="chen")
    with pytest.raises(ConfigError, match="unknown factor"):
        mig(FactorGrid((3, 4)), PosteriorEncoder((3, 4)), variant="chen", chen_factors=("scale",))


def test_chen_variant_separates_a_disentangled_from_a_duplicated_posterior():
    sizes = (3, 4, 5)
    grid = FactorGrid(sizes)
    good = mig(grid, PosteriorEncoder(sizes), 0, variant="chen")["mig"]
    assert 0.9 < good <= 1.0
    one_factor = mig(grid, PosteriorEncoder(sizes), 0, variant="chen", chen_factors=("f2",))["mig"]
    assert 0.9 < one_factor <= 1.0
    encoder = PosteriorEncoder(sizes)
    factors = grid.index_to_factors(np.arange(len(grid)))
    mu, _, logvar = encoder.codes_and_posterior(grid.images(np.arange(len(grid))))
    duplicated = mig_chen_from_posterior(np.concatenate([mu, mu], 1), np.concatenate([logvar, logvar], 1), factors, 0)
    assert duplicated["mig"] < 0.1
