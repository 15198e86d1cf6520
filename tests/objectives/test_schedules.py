import pytest
import torch

from betavae.objectives import BetaVAE, reconstruction_nll
from betavae.objectives.schedules import Schedule, cyclical, linear_warmup
from betavae.training.config import TrainConfig


@pytest.mark.parametrize("step,expected", [(0, 0.0), (1, 0.001), (250, 0.25), (999, 0.999), (1000, 1.0), (50_000, 1.0)])
def test_linear_warmup_exact_values(step, expected):
    assert linear_warmup(step, 1000) == pytest.approx(expected, abs=1e-12)


# T = 100 steps, M = 4 cycles (period 25), R = 0.5: the ramp covers steps 0..12 of each cycle.
@pytest.mark.parametrize("step,expected", [
    (0, 0.0), (5, 0.4), (10, 0.8), (12, 0.96), (13, 1.0), (24, 1.0),  # first cycle
    (25, 0.0), (30, 0.4), (37, 0.96), (38, 1.0),  # the second starts again from 0
    (75, 0.0), (99, 1.0),  # the last
])
def test_cyclical_exact_values(step, expected):
    assert cyclical(step, total_steps=100, cycles=4, ratio=0.5) == pytest.approx(expected, abs=1e-12)


def test_cyclical_with_a_fractional_period_follows_the_paper():
    # T/M = 10/3: cycles restart every ceil(10/3) = 4 steps; tau = (t mod 4) / (10/3).
    values = [cyclical(t, total_steps=10, cycles=3, ratio=0.5) for t in range(10)]
    assert values == pytest.approx([0.0, 0.6, 1.0, 1.0, 0.0, 0.6, 1.0, 1.0, 0.0, 0.6])


def test_cyclical_ratio_one_is_a_pure_sawtooth():
    assert [cyclical(t, 8, 2, 1.0) for t in range(8)] == pytest.approx([0, 0.25, 0.5, 0.75] * 2)


def test_schedule_dispatch_and_unknown_kind():
    assert Schedule()(0) == 1.0 and Schedule()(10**6) == 1.0
    assert Schedule("linear", warmup_steps=4)(2) == 0.5
    assert Schedule("cyclical", total_steps=100, cycles=4, ratio=0.5)(30) == pytest.approx(0.4)
    with pytest.raises(Exception, match="unknown β schedule"):
        Schedule("cosine")(0)


@pytest.mark.parametrize("schedule,step,fraction", [("constant", 7, 1.0), ("linear", 7, 0.7), ("cyclical", 7, 0.56)])
def test_beta_vae_uses_and_logs_the_scheduled_beta(schedule, step, fraction, fake_output):
    # cyclical: T = 50, M = 2 -> period 25; tau = 7/25 = 0.28; R = 0.5 -> 0.56
    config = TrainConfig(objective="beta", beta=4.0, beta_schedule=schedule, beta_warmup_steps=10, steps=50,
                         beta_cycles=2, beta_cycle_ratio=0.5).validate()
    objective = BetaVAE.from_config(config, dataset_size=100)
    output, x = fake_output()
    loss, logs = objective(output, x, step)
    kl = logs["kl"]
    assert logs["beta"] == pytest.approx(4.0 * fraction)
    assert torch.allclose(logs["weighted_regulariser"], 4.0 * fraction * kl)
    assert torch.allclose(loss, reconstruction_nll(output.recon, x).mean() + 4.0 * fraction * kl)
    if schedule == "constant":
        assert objective.weight_label() == "β = 4"
    else:
        assert objective.weight_label().startswith("β = 4 (") and schedule[:4] in objective.weight_label()
