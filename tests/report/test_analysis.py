import numpy as np
import pytest

from betavae.metrics.utils import discrete_entropy
from betavae.report.analysis import mean_code_by_factor, mutual_information_matrix


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
