import numpy as np
import pytest

from betavae.metrics.utils import discrete_entropy
from betavae.report.analysis import (code_factor_information, mean_code_by_factor, mutual_information_matrix, pair_angles,
                                     rotated_pairs, rotation_sentence)
from tests.metrics.conftest import FactorGrid
from tests.report.conftest import TurnedEncoder


def _factors(n=4000, sizes=(3, 8), seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, size=n) for s in sizes], axis=1)


def test_a_code_that_copies_a_factor_shares_all_its_entropy_and_noise_shares_none():
    factors = _factors()
    rng = np.random.default_rng(1)
    codes = np.stack([factors[:, 0] + 0.01 * rng.standard_normal(len(factors)),  # encodes factor 0 exactly
                      rng.standard_normal(len(factors))], axis=1)  # encodes nothing
    mi = mutual_information_matrix(codes, factors)
    h = discrete_entropy(factors)
    assert h == pytest.approx([np.log(3), np.log(8)], abs=0.01)
    assert mi[0, 0] == pytest.approx(h[0], rel=1e-6)
    # independent noise: only the plug-in estimator's small positive bias, ~ (bins-1)(levels-1) / 2N
    assert 0 <= mi[1, 0] < 0.02 and 0 <= mi[1, 1] < 0.05
    assert 0.0 < mi[0, 1] < 0.01


def test_plugin_estimate_matches_the_formula_on_a_hand_made_table():
    # codes in two bins, factor with two values: joint counts [[3, 1], [1, 3]] of 8
    codes = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=float)[:, None]
    factors = np.array([0, 0, 0, 1, 0, 1, 1, 1])[:, None]
    p = np.array([[3, 1], [1, 3]]) / 8
    expected = np.sum(p * np.log(p / 0.25))
    assert mutual_information_matrix(codes, factors, num_bins=2)[0, 0] == pytest.approx(expected)


def test_mean_code_by_factor_is_the_group_mean_and_spread():
    factors = _factors(n=500, sizes=(4, 5))
    factors[factors[:, 1] == 3, 1] = 2  # no image has value 3 of factor 1
    codes = np.random.default_rng(3).standard_normal((500, 2)) + factors[:, :1]
    summaries = mean_code_by_factor(codes, factors, (4, 5))
    for k, (mean, std) in enumerate(summaries):
        assert mean.shape == std.shape == (2, (4, 5)[k])
        for value in range((4, 5)[k]):
            group = codes[factors[:, k] == value]
            if len(group) == 0:
                assert np.isnan(mean[:, value]).all()
            else:
                np.testing.assert_allclose(mean[:, value], group.mean(0), atol=1e-9)
                np.testing.assert_allclose(std[:, value], group.std(0), atol=1e-7)
    assert np.isnan(summaries[1][0][:, 3]).all()


NAMES = ["shape", "scale", "posX", "posY"]


def _position_factors(n=4000, seed=0):
    """Class indices of dSprites-like factors: shape (3), scale (6), posX and posY (32 each)."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.integers(0, size, n) for size in (3, 6, 32, 32)])


def _code(factors, degrees, dims=(2, 5), latents=8, flip=False, seed=1):
    """A code whose dims ``dims`` hold posX and posY turned by ``degrees``, scale on dim 0, the rest noise."""
    rng = np.random.default_rng(seed)
    v = factors.astype(np.float64)
    v = (v - v.mean(0)) / v.std(0)
    theta = np.radians(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    codes = rng.normal(0, 0.05, (len(v), latents))
    codes[:, list(dims)] += v[:, [2, 3]] @ rotation.T * np.array([1.0, 0.8])  # unequal scales: not a pure rotation
    codes[:, 0] += v[:, 1]
    if flip:
        codes[:, dims[1]] *= -1
    return codes


@pytest.mark.parametrize("degrees, expected", [(30, 30), (-30, 30), (45, 45), (70, 20), (120, 30)])
def test_a_turned_pair_of_positions_is_found_with_its_angle(degrees, expected):
    factors = _position_factors()
    for flip in (False, True):
        (pair,) = rotated_pairs(_code(factors, degrees, flip=flip), factors, NAMES)
        assert pair["factors"] == ("posX", "posY") and pair["dims"] == (2, 5)
        assert abs(pair["angle"] - expected) < 1.5, pair
        assert min(pair["r2"]) > 0.9
    assert rotation_sentence(pair).startswith("posX and posY share z2 and z5, turned")


@pytest.mark.parametrize("degrees", [0, 4, 90, 180, 268])
def test_pairs_on_the_axes_or_nearly_are_not_reported(degrees):
    factors = _position_factors()
    codes = _code(factors, degrees, dims=(6, 1))
    assert rotated_pairs(codes, factors, NAMES) == []
    (pair,) = [p for p in pair_angles(codes, factors, NAMES) if p["factors"] == ("posX", "posY")]  # its small angle
    assert pair["dims"] == (1, 6) and abs(pair["angle"] - min(degrees % 90, 90 - degrees % 90)) < 1.5


def test_two_dims_that_hold_one_factor_and_categories_are_not_a_turned_pair():
    factors = _position_factors()
    v = (factors - factors.mean(0)) / factors.std(0)
    rng = np.random.default_rng(2)
    codes = rng.normal(0, 0.05, (len(v), 4))
    codes[:, 0] = v[:, 2] * 0.7 + v[:, 3] * 0.05  # both dims follow posX: a fit of rank ~1
    codes[:, 1] = v[:, 2] * 0.7 - v[:, 3] * 0.05
    assert rotated_pairs(codes, factors, NAMES) == []
    codes[:, 0] = v[:, 0] + v[:, 1]  # shape (3 classes) and scale at 45°: shape is not fitted linearly
    codes[:, 1] = v[:, 0] - v[:, 1]
    assert rotated_pairs(codes, factors, NAMES) == []


def test_noise_alone_finds_nothing():
    factors = _position_factors()
    assert rotated_pairs(np.random.default_rng(3).normal(size=(len(factors), 6)), factors, NAMES) == []
    assert rotated_pairs(np.zeros((len(factors), 6)), factors, NAMES) == []



def test_code_factor_information_finds_the_turn_of_a_real_encoding():
    sizes = (3, 6, 40, 32, 32)
    found = code_factor_information(TurnedEncoder(25.0, sizes), FactorGrid(sizes), n=3000, seed=0)
    assert found.names == ["f0", "f1", "f2", "f3", "f4"] and found.mi.shape == (6, 5)
    (pair,) = found.rotated_pairs()
    assert pair["factors"] == ("f3", "f4") and pair["dims"] == (1, 4) and abs(pair["angle"] - 25.0) < 1.0
    assert code_factor_information(TurnedEncoder(0.0, sizes), FactorGrid(sizes), n=3000).rotated_pairs() == []
