import math

import pytest
import torch

from betavae.errors import ConfigError
from betavae.models.vae import VAEOutput
from betavae.objectives import BetaVAE, reconstruction_nll
from betavae.objectives.gaussian import kl_to_standard_normal


def test_bernoulli_nll_is_summed_binary_cross_entropy():
    x = torch.tensor([[[[1.0, 0.0]]]])
    logits = torch.tensor([[[[0.0, 0.0]]]])
    assert math.isclose(float(reconstruction_nll(logits, x)), 2 * math.log(2), rel_tol=1e-6)


def test_gaussian_and_laplace_nll_keep_their_constants():
    x = torch.full((1, 1, 2, 2), 0.5)
    output = torch.zeros_like(x)  # sigmoid(0) = 0.5: a perfect mean
    sigma = 0.1
    gaussian = float(reconstruction_nll(output, x, "gaussian", sigma))
    assert math.isclose(gaussian, 4 * (math.log(sigma) + 0.5 * math.log(2 * math.pi)), rel_tol=1e-5)
    laplace = float(reconstruction_nll(output, x, "laplace", 0.2))
    assert math.isclose(laplace, 4 * math.log(0.4), rel_tol=1e-5)


def test_unknown_likelihood_is_refused():
    with pytest.raises(ConfigError, match="unknown likelihood"):
        reconstruction_nll(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), "poisson")


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_beta_vae_loss_is_reconstruction_plus_beta_kl(beta):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    output = VAEOutput(mu=mu, logvar=logvar, z=mu, recon=torch.randn(4, 1, 8, 8, generator=g))
    loss, logs = BetaVAE(beta)(output, x, step=0)
    recon = reconstruction_nll(output.recon, x).mean()
    kl = kl_to_standard_normal(mu, logvar).sum(1).mean()
    assert torch.allclose(loss, recon + beta * kl)
    assert torch.allclose(logs["kl"], kl) and torch.allclose(logs["weighted_regulariser"], beta * kl)
    assert torch.allclose(logs["elbo"], -(recon + kl))
    assert logs["kl_per_dim"].shape == (3,)
    assert torch.allclose(logs["kl_per_dim"].sum(), kl)
