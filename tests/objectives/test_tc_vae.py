import math

import pytest
import torch

from betavae.objectives import BetaTCVAE, reconstruction_nll
from betavae.objectives.tc_vae import mss_log_weights, pairwise_log_density, tc_decomposition


def _normal(mu, logvar):
    return torch.distributions.Normal(mu, torch.exp(0.5 * logvar))


def _estimated_kl(z, mu, logvar):
    """mean_i [log q(z_i|x_i) - log p(z_i)], from torch.distributions (independent of the module)."""
    log_q = _normal(mu, logvar).log_prob(z).sum(1)
    log_p = _normal(torch.zeros_like(z), torch.zeros_like(z)).log_prob(z).sum(1)
    return (log_q - log_p).mean()


def _factorised_and_correlated(batch, latents, seed, sigma=0.5):
    """Posteriors N(mu_i, sigma^2) whose means are independent across dims, and strongly correlated ones."""
    g = torch.Generator().manual_seed(seed)
    logvar = torch.full((batch, latents), 2 * math.log(sigma), dtype=torch.float64)
    mu = torch.randn(batch, latents, generator=g, dtype=torch.float64)
    shared = torch.randn(batch, 1, generator=g, dtype=torch.float64)
    mu_corr = shared.expand(batch, latents) + 0.1 * torch.randn(batch, latents, generator=g, dtype=torch.float64)
    noise = torch.randn(2, batch, latents, generator=g, dtype=torch.float64) * sigma
    return (mu + noise[0], mu, logvar), (mu_corr + noise[1], mu_corr, logvar)


def test_pairwise_log_density_entries(fake_output):
    output, _ = fake_output(batch=5, latents=3)
    matrix = pairwise_log_density(output.z, output.mu, output.logvar)
    assert matrix.shape == (5, 5, 3)
    expected = _normal(output.mu[2], output.logvar[2]).log_prob(output.z[4])  # log q(z_4 | x_2)
    assert torch.allclose(matrix[4, 2], expected, atol=1e-6)


def test_mss_weight_matrix_equals_a_hand_built_one():
    # B = 4, N = 10, M = 3: own image 1/N, the next one (N - M)/(N M) = 7/30, the other two 1/M.
    a, s, m = 1 / 10, 7 / 30, 1 / 3
    expected = torch.tensor([
        [a, s, m, m],
        [m, a, s, m],
        [m, m, a, s],
        [s, m, m, a],
    ], dtype=torch.float64)
    weights = mss_log_weights(4, 10, dtype=torch.float64).exp()
    assert torch.allclose(weights, expected, rtol=0, atol=1e-15)
    assert torch.allclose(weights.sum(1), torch.ones(4, dtype=torch.float64))
    # batch of 2: no 1/M entries remain
    assert torch.allclose(mss_log_weights(2, 5, dtype=torch.float64).exp(), torch.tensor([[0.2, 0.8], [0.8, 0.2]], dtype=torch.float64))


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_three_terms_sum_to_the_estimated_kl(estimator, dtype, tolerance, fake_output):
    output, _ = fake_output(batch=32, latents=5, seed=1, dtype=dtype)
    mi, tc, dwkl = tc_decomposition(output.z, output.mu, output.logvar, dataset_size=737_280, estimator=estimator)
    estimated_kl = _estimated_kl(output.z, output.mu, output.logvar)
    assert abs(float(mi + tc + dwkl - estimated_kl)) < tolerance
    assert abs(float(tc)) > 1e-3  # not a trivially zero split


def test_mss_terms_vanish_when_every_posterior_is_the_prior():
    # q(z|x) = N(0, I) for every x: q(z) = p(z) = prod_d q(z_d), so MI = TC = dimension-wise KL = 0.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 4, generator=g, dtype=torch.float64)
    zeros = torch.zeros_like(z)
    terms = tc_decomposition(z, zeros, zeros, dataset_size=1000, estimator="mss")
    assert all(abs(float(t)) < 1e-12 for t in terms)


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_total_correlation_near_zero_for_factorised_and_positive_for_correlated(estimator):
    # MWS divides every density by N B where MSS divides (about) by B: its log q(z) and each log q(z_d)
    # are low by log N, so its TC carries the offset (D - 1) log N, which does not depend on the parameters.
    n, latents = 737_280, 3
    offset = (latents - 1) * math.log(n) if estimator == "mws" else 0.0
    factorised, correlated = _factorised_and_correlated(batch=1000, latents=latents, seed=0)
    _, tc_factorised, _ = tc_decomposition(*factorised, dataset_size=n, estimator=estimator)
    _, tc_correlated, _ = tc_decomposition(*correlated, dataset_size=n, estimator=estimator)
    assert abs(float(tc_factorised) - offset) < 0.1
    assert float(tc_correlated) - offset > 0.8


def test_unknown_estimator_is_refused(fake_output):
    output, _ = fake_output()
    with pytest.raises(Exception, match="unknown estimator"):
        tc_decomposition(output.z, output.mu, output.logvar, 100, "iwae")


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_beta_tcvae_loss_weights_each_term(estimator, fake_output):
    output, x = fake_output(batch=16, latents=4, seed=2)
    objective = BetaTCVAE(dataset_size=5000, alpha=2.0, beta=6.0, gamma=0.5, estimator=estimator)
    loss, logs = objective(output, x, step=0)
    mi, tc, dwkl = tc_decomposition(output.z, output.mu, output.logvar, 5000, estimator)
    regulariser = 2.0 * mi + 6.0 * tc + 0.5 * dwkl
    assert torch.allclose(logs["weighted_regulariser"], regulariser)
    assert torch.allclose(loss, reconstruction_nll(output.recon, x).mean() + regulariser)
    for key, value in (("mutual_information", mi), ("total_correlation", tc), ("dimension_wise_kl", dwkl)):
        assert torch.allclose(logs[key], value)
    assert objective.weight_label() == f"α = 2, β = 6, γ = 0.5 ({estimator})"
