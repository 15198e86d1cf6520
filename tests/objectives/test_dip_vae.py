import math

import pytest
import torch

from betavae.models.vae import VAEOutput
from betavae.objectives import DIPVAEI, DIPVAEII, reconstruction_nll
from betavae.objectives.dip_vae import batch_covariance, covariance_deviation
from betavae.objectives.gaussian import kl_to_standard_normal


def _whitened(batch: int, latents: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Rows whose batch covariance (divide by B) is exactly ``scale`` · I, up to float64 rounding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, latents, generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / batch)
    return torch.linalg.solve_triangular(chol, x.T, upper=False).T * math.sqrt(scale)


def test_batch_covariance_is_the_biased_sample_covariance():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(batch_covariance(x), torch.cov(x.T, correction=0))


def test_penalty_is_zero_for_identity_and_grows_with_off_diagonal_covariance():
    off, diag = covariance_deviation(torch.eye(4))
    assert float(off) == 0.0 and float(diag) == 0.0
    previous = -1.0
    for c in (0.0, 0.1, 0.3, 0.6, 0.9):
        cov = torch.tensor([[1.0, c, 0.0], [c, 1.0, 0.0], [0.0, 0.0, 1.0]])
        off, diag = covariance_deviation(cov)
        assert float(off) == pytest.approx(2 * c * c) and float(diag) == 0.0
        assert float(off) > previous
        previous = float(off)
    off, diag = covariance_deviation(torch.diag(torch.tensor([1.0, 2.0, 0.5])))
    assert float(off) == 0.0 and float(diag) == pytest.approx(1.0 + 0.25)


def _output(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[VAEOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    recon = torch.randn(mu.shape[0], 1, 4, 4, generator=g, dtype=mu.dtype)
    x = (torch.rand(mu.shape[0], 1, 4, 4, generator=g) > 0.5).to(mu.dtype)
    return VAEOutput(mu=mu, logvar=logvar, z=mu, recon=recon), x


def test_dip1_penalises_the_covariance_of_the_means():
    mu = _whitened(64, 3, seed=0)  # Cov[mu] = I
    output, x = _output(mu, torch.full_like(mu, -2.0))
    objective = DIPVAEI(lambda_od=10.0)
    loss, logs = objective(output, x, step=0)
    kl = kl_to_standard_normal(output.mu, output.logvar).sum(1).mean()
    assert abs(float(logs["dip_penalty"])) < 1e-9
    assert torch.allclose(loss, reconstruction_nll(output.recon, x).mean() + kl)
    # mixing two dimensions adds off-diagonal covariance: the penalty becomes the weighted sum
    mixed = mu.clone()
    mixed[:, 1] = 0.6 * mu[:, 0] + 0.8 * mu[:, 1]  # variance still 1, covariance 0.6 with dim 0
    _, logs = objective(*_output(mixed, output.logvar), step=0)
    assert float(logs["covariance_off_diagonal"]) == pytest.approx(2 * 0.36)
    assert float(logs["dip_penalty"]) == pytest.approx(10.0 * 2 * 0.36, rel=1e-9)


def test_dip2_adds_the_mean_posterior_variance():
    mu = _whitened(64, 3, seed=0, scale=0.75)  # Cov[mu] = 0.75 I
    logvar = torch.full_like(mu, math.log(0.25))  # E[diag sigma^2] = 0.25: Cov_q(z)[z] = I
    output, x = _output(mu, logvar)
    assert abs(float(DIPVAEII(lambda_od=5.0)(output, x, 0)[1]["dip_penalty"])) < 1e-9
    # DIP-VAE-I sees only Cov[mu] = 0.75 I: diagonal term 3 · 0.25², weighted by λ_d = 10 λ_od
    logs = DIPVAEI(lambda_od=5.0)(output, x, 0)[1]
    assert float(logs["covariance_diagonal"]) == pytest.approx(3 * 0.0625)
    assert float(logs["dip_penalty"]) == pytest.approx(50.0 * 3 * 0.0625)


def test_lambda_d_defaults_follow_disentanglement_lib():
    assert DIPVAEI(lambda_od=2.0).lambda_d == 20.0
    assert DIPVAEII(lambda_od=2.0).lambda_d == 2.0
    assert DIPVAEI(lambda_od=2.0, lambda_d=3.0).lambda_d == 3.0
    assert DIPVAEII(lambda_od=2.0).weight_label() == "λ_od = 2, λ_d = 2"
