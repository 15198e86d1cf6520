import pytest
import torch
from torch import nn

from betavae.models.vae import VAE, VAEOutput
from betavae.objectives import FactorVAE, reconstruction_nll
from betavae.objectives.factor_vae import Discriminator, permute_dims
from betavae.training.checkpoint import load_checkpoint, save_checkpoint


def _codes(z: torch.Tensor) -> VAEOutput:
    """An output carrying only codes, as the discriminator step reads them."""
    return VAEOutput(mu=z, logvar=torch.zeros_like(z), z=z, recon=torch.empty(0))


def _tiny_vae(latents: int, seed: int) -> VAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 2 * latents))
        decoder = nn.Sequential(nn.Linear(latents, 64), nn.Unflatten(1, (1, 8, 8)))
    return VAE(encoder, decoder, latents)


def _snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(params, snapshot) -> bool:
    return all(torch.equal(p, s) for p, s in zip(params, snapshot))


def test_permutation_keeps_each_marginal_and_breaks_dependence():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2000, 1, generator=g)
    z = torch.cat([base, base, -base], 1)  # three perfectly dependent dimensions
    permuted = permute_dims(z, torch.Generator().manual_seed(1))
    for d in range(3):  # each column holds the same values, in another order
        assert torch.equal(permuted[:, d].sort().values, z[:, d].sort().values)
        assert not torch.equal(permuted[:, d], z[:, d])
    correlation = torch.corrcoef(permuted.T)
    assert correlation[0, 1].abs() < 0.1 and correlation[0, 2].abs() < 0.1  # was 1 and -1
    again = permute_dims(z, torch.Generator().manual_seed(1))
    assert torch.equal(permuted, again)  # the generator decides everything


def test_default_discriminator_is_the_papers_and_seeded():
    d = Discriminator(10)
    linears = [m for m in d.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 1000)] + [(1000, 1000)] * 5 + [(1000, 2)]
    slopes = {m.negative_slope for m in d.net if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2} and len([m for m in d.net if isinstance(m, nn.LeakyReLU)]) == 6
    a, b, c = (FactorVAE(4, seed=s, hidden=16, layers=2) for s in (0, 0, 1))
    assert _same(a.discriminator.parameters(), _snapshot(b.discriminator))
    assert not _same(a.discriminator.parameters(), _snapshot(c.discriminator))
    betas = a.optimizer.param_groups[0]["betas"]
    assert betas == (0.5, 0.9) and a.optimizer.param_groups[0]["lr"] == 1e-4


def test_loss_is_elbo_plus_gamma_times_the_logit_difference():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 3, generator=g)
    output = VAEOutput(mu=z, logvar=torch.zeros_like(z), z=z, recon=torch.randn(8, 1, 8, 8, generator=g))
    x = (torch.rand(8, 1, 8, 8, generator=g) > 0.5).float()
    objective = FactorVAE(3, gamma=7.0, hidden=16, layers=2)
    loss, logs = objective(output, x, step=0)
    logits = objective.discriminator(z)
    tc = (logits[:, 0] - logits[:, 1]).mean()
    kl = 0.5 * (z.square()).sum(1).mean()  # logvar = 0
    assert torch.allclose(logs["total_correlation"], tc)
    assert torch.allclose(logs["weighted_regulariser"], kl + 7.0 * tc)
    assert torch.allclose(loss, reconstruction_nll(output.recon, x).mean() + kl + 7.0 * tc)


def test_each_step_changes_only_its_own_parameters():
    latents = 3
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(16, 1, 8, 8, generator=g) > 0.5).float()
    model = _tiny_vae(latents, seed=0)
    objective = FactorVAE(latents, gamma=10.0, hidden=32, layers=2, discriminator_lr=1e-2)
    twin = FactorVAE(latents, gamma=10.0, hidden=32, layers=2, discriminator_lr=1e-2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    # VAE step: the TC term's gradient reaches z, none reaches the discriminator.
    discriminator_before, model_before = _snapshot(objective.discriminator), _snapshot(model)
    output = model(x, g)
    loss, logs = objective(output, x, step=0)
    assert torch.autograd.grad(logs["total_correlation"], output.z, retain_graph=True)[0].abs().sum() > 0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in objective.discriminator.parameters())
    assert _same(objective.discriminator.parameters(), discriminator_before)
    assert not _same(model.parameters(), model_before)
    assert all(p.requires_grad for p in objective.discriminator.parameters())  # unfrozen again

    # Discriminator step: the VAE's weights and gradients stay as they are; stale gradients
    # left on the discriminator are discarded, so it steps exactly like a clean twin.
    model_after_vae, model_grads = _snapshot(model), [p.grad.clone() for p in model.parameters()]
    for p in objective.discriminator.parameters():
        p.grad = torch.full_like(p, 1e3)
    aux = objective.update_auxiliary(output, x, step=0)
    twin.update_auxiliary(output, x, step=0)
    assert _same(model.parameters(), model_after_vae)
    assert all(torch.equal(p.grad, s) for p, s in zip(model.parameters(), model_grads))
    assert not _same(objective.discriminator.parameters(), discriminator_before)
    assert _same(objective.discriminator.parameters(), _snapshot(twin.discriminator))
    assert set(aux) == {"discriminator_loss", "discriminator_accuracy"}
    assert 0.0 <= float(aux["discriminator_accuracy"]) <= 1.0


def _train_discriminator(make_codes, steps: int = 150, batch: int = 256,
                         autocast_dtype: torch.dtype | None = None) -> FactorVAE:
    objective = FactorVAE(4, hidden=64, layers=3, discriminator_lr=1e-3, seed=0)
    objective.autocast_dtype = autocast_dtype
    for step in range(steps):
        objective.update_auxiliary(_codes(make_codes(batch)), torch.empty(0), step)
    return objective


def _held_out_accuracy_and_tc(objective: FactorVAE, make_codes, n: int = 4000) -> tuple[float, float]:
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        real = objective.discriminator(make_codes(n))
        permuted = objective.discriminator(permute_dims(make_codes(n), g))
    correct = (real.argmax(1) == 0).sum() + (permuted.argmax(1) == 1).sum()
    return float(correct) / (2 * n), float((real[:, 0] - real[:, 1]).mean())


def test_discriminator_stays_near_chance_on_independent_codes_and_learns_dependent_ones():
    g = torch.Generator().manual_seed(0)

    def independent(n: int) -> torch.Tensor:
        return torch.randn(n, 4, generator=g)

    def dependent(n: int) -> torch.Tensor:
        return torch.randn(n, 1, generator=g) + 0.3 * torch.randn(n, 4, generator=g)

    accuracy, tc = _held_out_accuracy_and_tc(_train_discriminator(independent), independent)
    assert abs(accuracy - 0.5) < 0.05 and abs(tc) < 0.15
    accuracy, tc = _held_out_accuracy_and_tc(_train_discriminator(dependent), dependent)
    assert accuracy > 0.75 and tc > 0.5  # the same training does tell dependent codes apart


def test_under_bf16_the_discriminator_computes_in_bfloat16_and_hands_on_float32():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 3, generator=g, requires_grad=True)
    output = VAEOutput(mu=z, logvar=torch.zeros_like(z), z=z, recon=torch.randn(64, 1, 8, 8, generator=g))
    x = (torch.rand(64, 1, 8, 8, generator=g) > 0.5).float()
    seen: list[torch.dtype] = []
    fp32, bf16 = FactorVAE(3, gamma=7.0, hidden=32, layers=2), FactorVAE(3, gamma=7.0, hidden=32, layers=2)
    bf16.autocast_dtype = torch.bfloat16
    for objective in (fp32, bf16):
        objective.discriminator.net[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    loss32, logs32 = fp32(output, x, step=0)
    loss16, logs16 = bf16(output, x, step=0)
    assert seen == [torch.float32, torch.bfloat16]
    assert logs16["total_correlation"].dtype == loss16.dtype == torch.float32
    # the same weights (same seed): bfloat16 rounds the products to 8 significant bits, nothing more
    tc16, tc32 = logs16["total_correlation"].item(), logs32["total_correlation"].item()
    assert tc16 == pytest.approx(tc32, abs=0.02)
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-3)
    (grad,) = torch.autograd.grad(loss16, z)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    before = _snapshot(bf16.discriminator)
    logs = bf16.update_auxiliary(output, x, step=0)
    assert seen[-1] == torch.bfloat16 and torch.isfinite(logs["discriminator_loss"])
    assert all(p.dtype == torch.float32 for p in bf16.discriminator.parameters())  # weights stay float32
    assert not _same(bf16.discriminator.parameters(), before)


def test_a_bf16_discriminator_still_tells_dependent_codes_apart():
    g = torch.Generator().manual_seed(0)

    def dependent(n: int) -> torch.Tensor:
        return torch.randn(n, 1, generator=g) + 0.3 * torch.randn(n, 4, generator=g)

    accuracy, tc = _held_out_accuracy_and_tc(_train_discriminator(dependent, autocast_dtype=torch.bfloat16), dependent)
    assert accuracy > 0.75 and tc > 0.5


def test_auxiliary_state_round_trip_continues_identically(tmp_path):
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(32, 3, generator=g) for _ in range(6)]
    a = FactorVAE(3, hidden=16, layers=2, discriminator_lr=1e-2, seed=0)
    for i, z in enumerate(batches[:3]):
        a.update_auxiliary(_codes(z), torch.empty(0), i)
    path = save_checkpoint(tmp_path, 3, {"objective": a.state_dict(), "auxiliary": a.auxiliary_state()})
    state = load_checkpoint(path)
    b = FactorVAE(3, hidden=16, layers=2, discriminator_lr=1e-2, seed=5)  # different init and stream
    b.load_state_dict(state["objective"])
    b.load_auxiliary_state(state["auxiliary"])
    for i, z in enumerate(batches[3:], 3):
        logs_a = a.update_auxiliary(_codes(z), torch.empty(0), i)
        logs_b = b.update_auxiliary(_codes(z), torch.empty(0), i)
        assert torch.equal(logs_a["discriminator_loss"], logs_b["discriminator_loss"])
    assert _same(a.discriminator.parameters(), _snapshot(b.discriminator))


def test_config_sets_the_discriminators_size_and_refuses_a_bad_one():
    from betavae.errors import ConfigError
    from betavae.objectives import build_objective
    from betavae.training.config import TrainConfig

    objective = build_objective(TrainConfig(objective="factor", discriminator_width=32, discriminator_layers=2), 1000)
    linears = [m for m in objective.discriminator.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 32), (32, 32), (32, 2)]
    paper = build_objective(TrainConfig(objective="factor"), 1000)  # the defaults are Kim & Mnih's
    assert len([m for m in paper.discriminator.net if isinstance(m, nn.Linear)]) == 7
    assert paper.discriminator.net[0].out_features == 1000
    for field, value, problem in (("discriminator_width", 0, "a whole number >= 1"),
                                  ("discriminator_layers", -1, "a whole number >= 1"),
                                  ("discriminator_layers", 1.5, "of type int")):
        with pytest.raises(ConfigError, match=f"{field} must be {problem}"):
            TrainConfig(objective="factor", **{field: value}).validate()
