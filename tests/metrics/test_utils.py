import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from betavae.errors import DataError
from betavae.metrics.utils import (check_codes_factors, discrete_entropy, discrete_mutual_info, entropy_normalized,
                                   histogram_discretize, metric_rng, mutual_information)


def test_mutual_information_of_a_2x2_table_by_hand():
    # joint counts [[3, 1], [1, 3]] over 8 samples: p(x,y) = 3/8 on the diagonal, 1/8 off it, marginals 1/2
    x = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    expected = 2 * (3 / 8) * np.log((3 / 8) / (1 / 4)) + 2 * (1 / 8) * np.log((1 / 8) / (1 / 4))
    assert mutual_information(x, y) == pytest.approx(expected, abs=1e-12)
    assert mutual_information(x, x) == pytest.approx(np.log(2), abs=1e-12)
    assert mutual_information(x, np.zeros(8)) == 0.0


def test_mutual_information_matches_scikit_learn():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 7, 500), rng.integers(0, 4, 500)
    b = np.where(rng.random(500) < 0.5, a % 4, b)
    assert mutual_information(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-12)


def test_discrete_entropy_and_matrix_shapes():
    factors = np.array([[0, 0], [1, 0], [2, 1], [3, 1]])
    assert discrete_entropy(factors) == pytest.approx([np.log(4), np.log(2)])
    m = discrete_mutual_info(factors[:, :1], factors)
    assert m.shape == (1, 2) and m[0, 0] == pytest.approx(np.log(4)) and m[0, 1] == pytest.approx(np.log(2))


def test_histogram_discretize_follows_the_protocol_bins():
    x = np.linspace(0, 1, 41)[:, None]
    bins = histogram_discretize(x, 20)[:, 0]
    assert bins.min() == 1 and bins.max() == 20  # the maximum falls in the last bin
    assert np.all(np.diff(bins) >= 0)
    assert np.array_equal(bins, np.digitize(x[:, 0], np.histogram(x[:, 0], 20)[1][:-1]))
    assert np.all(histogram_discretize(np.ones((5, 1)), 20) == histogram_discretize(np.ones((5, 1)), 20)[0])


def test_entropy_normalized_is_zero_for_one_hot_and_one_for_uniform():
    assert entropy_normalized(np.array([[1.0, 0, 0]]), axis=1)[0] == pytest.approx(0.0, abs=1e-8)
    assert entropy_normalized(np.ones((1, 4)), axis=1)[0] == pytest.approx(1.0)
    assert entropy_normalized(np.ones((1, 1)), axis=1)[0] == 0.0


def test_metric_rng_depends_on_seed_and_name_only():
    assert metric_rng(0, "mig").integers(1 << 30) == metric_rng(0, "mig").integers(1 << 30)
    assert metric_rng(0, "mig").integers(1 << 30) != metric_rng(0, "sap").integers(1 << 30)
    assert metric_rng(0, "mig").integers(1 << 30) != metric_rng(1, "mig").integers(1 << 30)


@pytest.mark.parametrize(
    "codes, factors, message",
    [
        (np.zeros((10, 2)), np.zeros((9, 1), int), "different lengths"),
        (np.full((10, 2), np.nan), np.zeros((10, 1), int), "NaN"),
        (np.zeros(10), np.zeros((10, 1), int), "2-D"),
        (np.zeros((10, 2)), np.full((10, 1), 0.5), "integer class indices"),
        (np.zeros((10, 2)), -np.ones((10, 1), int), "non-negative"),
    ],
)
def test_bad_arrays_raise_a_data_error_naming_the_problem(codes, factors, message):
    with pytest.raises(DataError, match=message):
        check_codes_factors(codes, factors)
