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


# --- a memory of earlier posteriors (--tc-memory) ---------------------------------------------------------

from betavae.errors import CheckpointError, ConfigError  # noqa: E402
from betavae.objectives.tc_vae import memory_log_weights  # noqa: E402
from betavae.training import TrainConfig  # noqa: E402


def _dataset_posteriors(n, latents, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, latents, generator=g, dtype=torch.float64)
    logvar = torch.randn(n, latents, generator=g, dtype=torch.float64) - 1.0
    z = mu + torch.randn(n, latents, generator=g, dtype=torch.float64) * torch.exp(0.5 * logvar)
    return z, mu, logvar


def _exact_decomposition(z, mu, logvar, all_mu, all_logvar):
    """MI, TC, dimension-wise KL at samples z of the first rows, with q(z) = (1/N) Σ_n q(z|x_n) summed exactly."""
    n = all_mu.shape[0]
    log_q = _normal(all_mu.unsqueeze(0), all_logvar.unsqueeze(0)).log_prob(z.unsqueeze(1))  # (B, N, D)
    log_qz = torch.logsumexp(log_q.sum(2), 1) - math.log(n)
    log_product = (torch.logsumexp(log_q, 1) - math.log(n)).sum(1)
    log_q_own = _normal(mu, logvar).log_prob(z).sum(1)
    log_p = _normal(torch.zeros_like(z), torch.zeros_like(z)).log_prob(z).sum(1)
    return (log_q_own - log_qz).mean(), (log_qz - log_product).mean(), (log_product - log_p).mean()


def test_memory_weights_rows_sum_to_one_with_the_own_image_at_one_over_n():
    weights = memory_log_weights(4, 6, 100, "mss", torch.float64).exp()
    assert weights.shape == (4, 10)
    assert torch.allclose(weights.sum(1), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(torch.diagonal(weights[:, :4]), torch.full((4,), 0.01, dtype=torch.float64))
    assert torch.allclose(weights[0, 1], torch.tensor(99 / (100 * 9), dtype=torch.float64))
    assert torch.allclose(memory_log_weights(4, 6, 100, "mws", torch.float64).exp(),
                          torch.full((4, 10), 1 / 1000, dtype=torch.float64))


def test_memory_holding_the_rest_of_the_dataset_gives_the_exact_decomposition():
    """Batch + memory = all N images: the mss weights are 1/N each, so the estimate is the exact one."""
    z, mu, logvar = _dataset_posteriors(n=60, latents=4, seed=3)
    batch = 12
    got = tc_decomposition(z[:batch], mu[:batch], logvar[:batch], 60, "mss", mu[batch:], logvar[batch:])
    want = _exact_decomposition(z[:batch], mu[:batch], logvar[:batch], mu, logvar)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5), (got, want)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_memory_estimate_and_gradients_equal_the_concatenated_sum(estimator):
    """The memory's fused sums give what the batch's formula gives on the batch and memory concatenated."""
    z, mu, logvar = _dataset_posteriors(n=50, latents=5, seed=4)
    mu, logvar = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    eps = (z - mu.detach()) * torch.exp(-0.5 * logvar.detach())
    batch, n = 16, 10_000
    sample = (mu + eps * torch.exp(0.5 * logvar))[:batch]
    got = tc_decomposition(sample, mu[:batch], logvar[:batch], n, estimator, mu[batch:].detach(), logvar[batch:].detach())
    pairs = pairwise_log_density(sample, torch.cat([mu[:batch], mu[batch:].detach()]),
                                 torch.cat([logvar[:batch], logvar[batch:].detach()]))
    log_w = memory_log_weights(batch, 50 - batch, n, estimator, torch.float64)
    log_qz = torch.logsumexp(pairs.sum(2) + log_w, 1)
    log_product = torch.logsumexp(pairs + log_w.unsqueeze(2), 1).sum(1)
    log_q_own = _normal(mu[:batch], logvar[:batch]).log_prob(sample).sum(1)
    log_p = _normal(torch.zeros_like(sample), torch.zeros_like(sample)).log_prob(sample).sum(1)
    want = ((log_q_own - log_qz).mean(), (log_qz - log_product).mean(), (log_product - log_p).mean())
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5)
    grads_got = torch.autograd.grad(got[0] + 3 * got[1] + 5 * got[2], (mu, logvar), retain_graph=True)
    grads_want = torch.autograd.grad(want[0] + 3 * want[1] + 5 * want[2], (mu, logvar))
    for g, w in zip(grads_got, grads_want):
        assert torch.allclose(g, w, atol=1e-5)
    assert torch.allclose(sum(got), _estimated_kl(sample, mu[:batch], logvar[:batch]), atol=1e-5)


def test_a_larger_memory_brings_the_mutual_information_estimate_down_from_its_ceiling():
    """Sharp posteriors: the batch alone reads MI near its ceiling log N; batch + memory = the dataset reads the truth."""
    n, batch = 2000, 16
    g = torch.Generator().manual_seed(5)
    centres = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1  # a square of codes
    logvar = torch.full((n, 2), math.log(0.02 ** 2), dtype=torch.float64)  # sharp: a batch of 16 rarely overlaps
    z = centres + torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.02
    exact_mi = _exact_decomposition(z[:batch], centres[:batch], logvar[:batch], centres, logvar)[0]
    alone = tc_decomposition(z[:batch], centres[:batch], logvar[:batch], n, "mss")[0]
    with_memory = tc_decomposition(z[:batch], centres[:batch], logvar[:batch], n, "mss", centres[batch:],
                                  logvar[batch:])[0]
    assert alone > exact_mi + 0.5  # the batch alone finds too few neighbours: MI reads high (6.8 against 6.05 here)
    assert abs(float(with_memory - exact_mi)) < 1e-5  # the memory is summed in float32


def test_the_objective_fills_its_memory_as_a_ring_and_checkpoints_it(fake_output):
    objective = BetaTCVAE(dataset_size=1000, estimator="mss", memory=20, latents=3)
    assert objective.memory_filled == 0
    outputs = [fake_output(batch=8, latents=3, seed=s) for s in range(3)]
    for step, (output, x) in enumerate(outputs):
        objective(output, x, step)
        objective.update_auxiliary(output, x, step)
    assert objective.memory_filled == 20 and objective.memory_next == 4
    # 24 rows written into a ring of 20: the third batch's first four fill rows 16..19, its last four wrap to 0..3
    third = outputs[2][0]
    assert torch.equal(objective.memory_mu[16:20], third.mu[:4]) and torch.equal(objective.memory_mu[:4], third.mu[4:])
    assert torch.equal(objective.memory_mu[8:16], outputs[1][0].mu)
    assert torch.equal(objective.memory_mu[4:8], outputs[0][0].mu[4:])
    restored = BetaTCVAE(dataset_size=1000, estimator="mss", memory=20, latents=3)
    restored.load_state_dict(objective.state_dict())
    restored.load_auxiliary_state(objective.auxiliary_state())
    assert (restored.memory_filled, restored.memory_next) == (20, 4)
    output, x = fake_output(batch=8, latents=3, seed=9)
    assert torch.equal(objective(output, x, 3)[0], restored(output, x, 3)[0])
    assert objective.weight_label() == "α = 1, β = 6, γ = 1 (mss, memory of 20)"
    for damaged in (None, {}, {"memory_filled": 21, "memory_next": 0}, {"memory_filled": "20", "memory_next": 4}):
        with pytest.raises(CheckpointError, match="memory"):
            restored.load_auxiliary_state(damaged)


def test_a_memory_changes_the_loss_once_filled(fake_output):
    plain = BetaTCVAE(dataset_size=1000, estimator="mss")
    remembering = BetaTCVAE(dataset_size=1000, estimator="mss", memory=16, latents=3)
    output, x = fake_output(batch=8, latents=3, seed=0)
    assert torch.equal(plain(output, x, 0)[0], remembering(output, x, 0)[0])  # an empty memory: the paper's estimate
    remembering.update_auxiliary(*fake_output(batch=8, latents=3, seed=1), 0)
    assert not torch.allclose(plain(output, x, 1)[0], remembering(output, x, 1)[0])


@pytest.mark.parametrize(("fields", "message"), [({"objective": "tc", "tc_memory": -1}, "whole number >= 0"),
                                                  ({"objective": "tc", "tc_memory": 2.5}, "tc_memory must be of type int"),
                                                  ({"objective": "beta", "tc_memory": 64}, "applies to --objective tc")])
def test_bad_memory_config_is_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**fields).validate()


def test_the_config_reaches_the_memory():
    from betavae.objectives import build_objective
    objective = build_objective(TrainConfig(objective="tc", tc_memory=128, latents=6), 5000)
    assert objective.memory == 128 and tuple(objective.memory_mu.shape) == (128, 6)
