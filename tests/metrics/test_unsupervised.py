import numpy as np
import pytest
from tests.metrics.conftest import FactorGrid, PosteriorEncoder, Unlabelled, identity

from betavae.errors import DataError
from betavae.metrics import unsupervised, unsupervised_from_codes
from betavae.metrics.unsupervised import gaussian_total_correlation, gaussian_wasserstein_correlation


def test_gaussian_total_correlation_by_hand():
    rho = 0.6
    cov = np.array([[1.0, rho], [rho, 1.0]])
    assert gaussian_total_correlation(cov) == pytest.approx(-0.5 * np.log(1 - rho**2))
    assert gaussian_total_correlation(np.diag([2.0, 3.0])) == pytest.approx(0.0, abs=1e-12)
    assert gaussian_total_correlation(np.diag([2.0, 0.0])) == pytest.approx(0.0, abs=1e-12)  # constant dim left out


def test_gaussian_wasserstein_correlation_by_hand():
    assert gaussian_wasserstein_correlation(np.diag([2.0, 3.0])) == pytest.approx(0.0, abs=1e-12)
    # Σ = [[1, 1], [1, 1]] (diag 1): sqrt(Σ) has trace sqrt(2), so 2·2 - 2·sqrt(2)
    assert gaussian_wasserstein_correlation(np.ones((2, 2))) == pytest.approx(4 - 2 * np.sqrt(2))


def test_kl_per_dimension_and_active_units_by_hand():
    mu = np.array([[1.0, 0.0], [-1.0, 0.0]])
    logvar = np.array([[0.0, np.log(4.0)], [0.0, np.log(4.0)]])
    result = unsupervised_from_codes(mu, mu, logvar)
    assert result["kl_dim_0"] == pytest.approx(0.5)  # ½ (1 + 1 - 0 - 1)
    assert result["kl_dim_1"] == pytest.approx(0.5 * (4 - np.log(4) - 1))
    assert result["kl_total"] == pytest.approx(result["kl_dim_0"] + result["kl_dim_1"])
    assert result["active_units"] == 1.0  # var of dim 0 is 1 > 0.01, dim 1 is constant


def test_independent_codes_have_little_dependence_duplicated_much_more():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(5_000, 3))
    independent = unsupervised_from_codes(codes)
    dependent = unsupervised_from_codes(np.concatenate([codes, codes[:, :1] + 0.01 * rng.normal(size=(5_000, 1))], 1))
    assert independent["gaussian_total_correlation"] < 0.01
    assert dependent["gaussian_total_correlation"] > 1.0
    assert dependent["mutual_info_score"] > 5 * independent["mutual_info_score"]
    assert "kl_total" not in independent and independent["active_units"] == 3.0


def test_runs_on_a_dataset_without_factors():
    result = unsupervised(Unlabelled(), identity, 0, num_train=300)
    assert result["active_units"] == 6.0  # uniform pixels: variance 1/12 > 0.01
    assert result == unsupervised(Unlabelled(), identity, 0, num_train=300)


def test_posterior_encoder_adds_kl_terms():
    sizes = (3, 4, 5)
    result = unsupervised(FactorGrid(sizes), PosteriorEncoder(sizes, extra_dims=2), 0, num_train=500)
    assert result["active_units"] == 3.0
    assert result["kl_dim_3"] == pytest.approx(0.0) and result["kl_dim_4"] == pytest.approx(0.0)
    assert result["kl_dim_0"] > 0.5


def test_mu_and_logvar_go_together():
    with pytest.raises(DataError, match="both"):
        unsupervised_from_codes(np.zeros((4, 2)), mu=np.zeros((4, 2)))
