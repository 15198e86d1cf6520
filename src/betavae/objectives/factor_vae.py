"""FactorVAE (Kim & Mnih 2018, "Disentangling by factorising", eq. 2):
minimise  E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)) + γ · KL(q(z) || Π_d q(z_d)).

The total correlation is estimated with the density-ratio trick: a discriminator D (6 hidden layers
of 1000 units, leaky ReLU 0.2, 2 logits: "from q(z)" and "permuted") is trained to tell samples of
q(z) from samples of Π_d q(z_d), made by shuffling each dimension independently across a batch
(Algorithm 1), so TC ≈ E_q(z)[logit_real(z) − logit_permuted(z)] = E_q(z)[log D(z) / (1 − D(z))].

The two players train in turn, each updating only its own parameters (Algorithm 2):
- VAE step (the training loop's Adam step on this objective's loss): the discriminator's parameters
  take no gradient, so the loss's backward pass never leaves gradients on them;
- discriminator step (:meth:`FactorVAE.update_auxiliary`, after the VAE step): its own Adam
  (lr 1e-4, betas (0.5, 0.9)) on a cross-entropy over detached codes, after clearing any gradient
  left on its parameters.

Arithmetic: under bf16 autocast (``--precision bf16``, or ``auto`` on a GPU with bfloat16) the training
loop sets :attr:`FactorVAE.autocast_dtype`, and the discriminator's matrix products run in bfloat16 as the
VAE's do (its weights and Adam's state stay float32); its logits are cast to float32 before the total
correlation or the cross-entropy is formed from them. Otherwise it runs in float32.

Batches: the paper draws a second batch for the permuted samples. The loop gives one batch, so the
discriminator step splits it: the first half's codes are the "real" samples and the second half,
permuted, the "permuted" ones. The two sets then come from different images, as with two batches,
so the discriminator cannot match a permuted code to the real code it was made from.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from betavae.objectives.base import Objective

if TYPE_CHECKING:
    from betavae.models.vae import VAEOutput

REAL, PERMUTED = 0, 1  # the discriminator's logit indices


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z`` ``(B, D)`` with each column shuffled independently across the batch (Kim & Mnih, Alg. 1).

    Each dimension keeps its values (its marginal) while the dependence between dimensions is broken.
    """
    order = torch.rand(z.shape, generator=generator, device=z.device).argsort(dim=0)  # (B, D)
    return z.gather(0, order)


class Discriminator(nn.Module):
    """An MLP from codes ``(B, D)`` to 2 logits ``(B, 2)``: [from q(z), permuted].

    Weights are drawn from ``generator`` (PyTorch's default ranges, U(±1/√fan_in)), so a seeded
    objective is reproducible without touching the global random state.
    """

    def __init__(self, latents: int, hidden: int = 1000, layers: int = 6, negative_slope: float = 0.2,
                 generator: torch.Generator | None = None):
        super().__init__()
        blocks: list[nn.Module] = []
        width = latents
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LeakyReLU(negative_slope)]
            width = hidden
        blocks.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*blocks)
        for block in self.net:
            if isinstance(block, nn.Linear):
                bound = 1.0 / block.in_features**0.5
                nn.init.uniform_(block.weight, -bound, bound, generator=generator)
                nn.init.uniform_(block.bias, -bound, bound, generator=generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class FactorVAE(Objective):
    name = "factor"
    data_parallel = False  # its discriminator and optimizer are its own
    weight_field, weight_symbol = "factor_gamma", "γ"
    regulariser_label = "KL+γ·TC"
    min_batch_size = 2

    def __init__(self, latents: int, gamma: float = 35.0, discriminator_lr: float = 1e-4, seed: int = 0,
                 hidden: int = 1000, layers: int = 6, likelihood: str = "bernoulli", likelihood_scale: float = 0.1):
        super().__init__(likelihood, likelihood_scale)
        self.gamma = gamma
        init = torch.Generator().manual_seed(seed)
        self.discriminator = Discriminator(latents, hidden, layers, generator=init)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=discriminator_lr, betas=(0.5, 0.9))
        # the permutations' own stream, spawned from the same seed
        self.permutation_seed = int(torch.randint(2**62, (1,), generator=init))
        self._generator: torch.Generator | None = None  # made on the codes' device at first use
        self._generator_state: torch.Tensor | None = None  # restored state, applied when it is made

    @classmethod
    def from_config(cls, config, dataset_size: int) -> "FactorVAE":
        return cls(config.latents, config.factor_gamma, config.discriminator_lr, config.seed,
                   config.discriminator_width, config.discriminator_layers, likelihood=config.likelihood,
                   likelihood_scale=config.likelihood_scale)

    def weight_label(self) -> str:
        return f"γ = {self.gamma:g}"

    def kl_high_advice(self) -> str:
        return (f"FactorVAE weighs the KL by 1, as a plain VAE does (γ = {self.gamma:g} weighs the total correlation "
                "only), so it is usual for its KL to stay there; it says the codes are more precise than telling "
                "the images apart needs, not that γ is too low")

    @contextmanager
    def _frozen_discriminator(self) -> Iterator[None]:
        """Graphs built inside carry no gradient to the discriminator's parameters."""
        flags = [p.requires_grad for p in self.discriminator.parameters()]
        for p in self.discriminator.parameters():
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(self.discriminator.parameters(), flags):
                p.requires_grad_(flag)

    def discriminate(self, z: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits ``(B, 2)`` of codes ``z``, in float32 whatever arithmetic produced them."""
        with torch.autocast(z.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            return self.discriminator(z).float()

    def regulariser(self, output: VAEOutput, kl: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        with self._frozen_discriminator():
            logits = self.discriminate(output.z)  # (B, 2); gradients reach z only
        total_correlation = (logits[:, REAL] - logits[:, PERMUTED]).mean()
        return kl + self.gamma * total_correlation, {"total_correlation": total_correlation}

    def _permutation_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device).manual_seed(self.permutation_seed)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
                self._generator_state = None
        return self._generator

    def update_auxiliary(self, output: VAEOutput, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One Adam step of the discriminator: first half of the codes real, second half permuted."""
        z = output.z.detach()
        half = z.shape[0] // 2
        real = z[:half]
        permuted = permute_dims(z[half : 2 * half], self._permutation_generator(z.device))
        logits = self.discriminate(torch.cat([real, permuted]))  # (2·half, 2)
        labels = torch.full((2 * half,), REAL, device=z.device)
        labels[half:] = PERMUTED
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)  # nothing may carry over from elsewhere
        loss.backward()
        self.optimizer.step()
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        return {"discriminator_loss": loss.detach(), "discriminator_accuracy": accuracy}

    def auxiliary_state(self) -> dict[str, Any]:
        generator = self._generator.get_state() if self._generator is not None else self._generator_state
        return {"optimizer": self.optimizer.state_dict(), "generator": generator}

    def load_auxiliary_state(self, state: dict[str, Any]) -> None:
        # Adam keeps the given tensors when device and dtype match: copy so no two optimizers share them
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._generator, self._generator_state = None, state["generator"]
