import pytest
import torch

from betavae.objectives import CapacityVAE, reconstruction_nll
from betavae.objectives.gaussian import kl_to_standard_normal


@pytest.mark.parametrize("step,expected", [(0, 0.0), (1, 0.025), (400, 10.0), (999, 24.975), (1000, 25.0), (10**6, 25.0)])
def test_capacity_follows_its_ramp(step, expected):
    assert CapacityVAE(capacity_max=25.0, capacity_steps=1000).capacity_at(step) == pytest.approx(expected, abs=1e-12)


def test_loss_at_capacity_equal_to_kl_is_the_reconstruction_alone(fake_output):
    output, x = fake_output()
    kl = float(CapacityVAE().core_terms(output, x)[1])  # the analytic KL exactly as the objective sums it
    objective = CapacityVAE(gamma=1000.0, capacity_max=kl, capacity_steps=10)
    loss, logs = objective(output, x, step=10)  # the ramp has reached C_max = KL
    reconstruction = reconstruction_nll(output.recon, x).mean()
    assert torch.equal(loss, reconstruction)
    assert float(logs["weighted_regulariser"]) == 0.0 and float(logs["capacity_gap"]) == 0.0
    assert logs["capacity"] == kl


def test_loss_is_gamma_times_the_distance_to_the_ramp(fake_output):
    output, x = fake_output(seed=3)
    kl = kl_to_standard_normal(output.mu, output.logvar).sum(1).mean()
    objective = CapacityVAE(gamma=100.0, capacity_max=2 * float(kl), capacity_steps=100)
    for step in (0, 25, 50, 75, 100):
        c = 2 * float(kl) * step / 100
        loss, logs = objective(output, x, step)
        assert logs["capacity"] == pytest.approx(c)
        assert torch.allclose(logs["capacity_gap"], kl - c, atol=1e-5)
        assert torch.allclose(logs["weighted_regulariser"], 100.0 * (kl - c).abs(), atol=1e-3)
        assert torch.allclose(loss, reconstruction_nll(output.recon, x).mean() + 100.0 * (kl - c).abs(), atol=1e-3)
    assert objective.weight_label() == f"γ = 100, C 0 → {2 * float(kl):g} nats over 100 steps"
