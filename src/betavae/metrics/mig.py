"""Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in Variational
Autoencoders", NeurIPS 2018, the MIG definition).

    MIG = 1/K Σ_k (I(z_(1); v_k) - I(z_(2); v_k)) / H(v_k)

where z_(1), z_(2) are the code dimensions with the largest and second largest mutual information
with factor v_k. Two estimators:

* ``variant="protocol"`` (default, disentanglement_lib): 10,000 uniform samples, mean codes, each
  dimension cut into 20 equal-width bins, plug-in mutual information and factor entropy.
* ``variant="chen"`` (Chen et al.'s own code): the whole dataset, one sample z ~ q(z|x) per image,
  H(z_j) and H(z_j | v_k) estimated from the posterior mixture q(z_j) = 1/N Σ_n q(z_j | x_n)
  with 10,000 samples, mutual information clamped at 0. Chen et al. use the four dSprites factors
  scale, orientation, posX, posY: pass ``chen_factors=("scale", "orientation", "posX", "posY")``.
  It needs the posterior (an encoder from ``encoder_fn``) and costs O(samples x images x D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from betavae.data.base import ImageDataset
from betavae.errors import ConfigError, DataError
from betavae.metrics.base import (DEFAULT_BATCH_SIZE, Draw, Encode, Encoded, Metric, factor_indices,
                                  sample_factors)
from betavae.metrics.utils import (NUM_BINS, check_codes, check_codes_factors, discrete_entropy,
                                   discrete_mutual_info, histogram_discretize)

VARIANTS = ("protocol", "chen")


def _gap(mutual_info: np.ndarray, entropies: np.ndarray) -> float:
    """Mean over factors of (largest - second largest mutual information) / entropy; ``(D, K)``."""
    if np.any(entropies <= 0):
        constant = [int(j) for j in np.flatnonzero(entropies <= 0)]
        raise DataError(
            f"factor(s) {constant} take a single value in the sample, so MIG is undefined for them; "
            "drop constant factors or draw more samples."
        )
    ranked = np.sort(mutual_info, axis=0)[::-1]
    second = ranked[1] if len(ranked) > 1 else np.zeros(ranked.shape[1])  # one code: the gap is its MI
    return float(np.mean((ranked[0] - second) / entropies))


def mig_from_codes(codes: np.ndarray, factors: np.ndarray, num_bins: int = NUM_BINS) -> dict[str, float]:
    """MIG (protocol estimator) of codes ``(N, D)`` for factor class indices ``(N, K)``: ``{"mig"}``."""
    codes, factors = check_codes_factors(codes, factors)
    mutual_info = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
    return {"mig": _gap(mutual_info, discrete_entropy(factors))}


def _estimate_entropies(z: np.ndarray, mu: np.ndarray, logvar: np.ndarray, rng: np.random.Generator,
                        num_samples: int, chunk_elements: int = 1 << 22) -> np.ndarray:
    """H(z_j) per dimension for the mixture q(z_j) = 1/N Σ_n N(z_j; mu_nj, exp(logvar_nj)).

    Monte Carlo over ``num_samples`` of the rows of ``z`` (samples of that mixture): H ≈ -mean log q.
    """
    n, d = mu.shape
    pick = rng.permutation(n)[:num_samples] if num_samples < n else np.arange(n)
    samples = torch.from_numpy(np.ascontiguousarray(z[pick], dtype=np.float32))  # (S, D)
    mean = torch.from_numpy(np.ascontiguousarray(mu, dtype=np.float32))  # (N, D)
    inv_std = torch.from_numpy(np.exp(-0.5 * np.asarray(logvar, dtype=np.float32)))  # (N, D)
    log_norm = torch.log(inv_std) - 0.5 * math.log(2 * math.pi)  # (N, D)
    total = torch.zeros(d, dtype=torch.float64)
    step = max(1, chunk_elements // (n * d))
    for start in range(0, len(samples), step):
        chunk = samples[start : start + step, None, :]  # (c, 1, D)
        log_density = log_norm - 0.5 * ((chunk - mean) * inv_std).square()  # (c, N, D)
        log_q = torch.logsumexp(log_density, dim=1) - math.log(n)  # (c, D)
        total -= log_q.sum(dim=0).double()
    return (total / len(samples)).numpy()


def mig_chen_from_posterior(mu: np.ndarray, logvar: np.ndarray, factors: np.ndarray, rng: np.random.Generator | int = 0,
                            num_samples: int = 10_000) -> dict[str, float]:
    """MIG by Chen et al.'s estimator from the posterior of every image ``(N, D)`` and its factors ``(N, K)``.

    I(z_j; v_k) = H(z_j) - Σ_v p(v) H(z_j | v_k = v), each entropy estimated from the posterior
    mixture of the images concerned, as Chen et al.'s published code does; clamped at 0 and
    normalised by H(v_k) (log of the factor size on a full grid).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    mu, factors = check_codes_factors(mu, factors)
    logvar = check_codes(logvar, "logvar")
    if logvar.shape != mu.shape:
        raise DataError(f"mu and logvar have different shapes {mu.shape} and {logvar.shape}; pass both from one encoder.")
    z = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)  # one sample per image, as Chen et al.
    marginal = _estimate_entropies(z, mu, logvar, rng, num_samples)  # (D,)
    conditional = np.zeros((factors.shape[1], mu.shape[1]))  # (K, D)
    for k in range(factors.shape[1]):
        values, counts = np.unique(factors[:, k], return_counts=True)
        for value, count in zip(values, counts):
            rows = factors[:, k] == value
            conditional[k] += count / len(factors) * _estimate_entropies(z[rows], mu[rows], logvar[rows], rng, num_samples)
    mutual_info = np.clip(marginal[None, :] - conditional, 0.0, None).T  # (D, K)
    return {"mig": _gap(mutual_info, discrete_entropy(factors))}


@dataclass(frozen=True)
class MIG(Metric):
    """Protocol parameters: 10,000 samples, 20 bins; or Chen et al.'s estimator (see module docstring)."""

    name: ClassVar[str] = "mig"
    primary_value: ClassVar[str] = "mig"
    num_train: int = 10_000
    num_bins: int = NUM_BINS
    variant: str = "protocol"
    chen_factors: tuple[str, ...] | None = None
    chen_num_samples: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown MIG variant '{self.variant}'; choose one of: {', '.join(VARIANTS)}.")
        if self.num_bins < 2:
            raise ConfigError(f"mig: num_bins must be at least 2, got {self.num_bins}.")
        if self.chen_factors is not None:
            object.__setattr__(self, "chen_factors", tuple(self.chen_factors))  # lists from JSON configs

    @property
    def needs_posterior(self) -> bool:
        return self.variant == "chen"

    def draw(self, dataset: ImageDataset, rng: np.random.Generator) -> Draw:
        if self.variant == "protocol":
            factors = sample_factors(dataset, rng, (self.num_train,))
            return Draw(indices={"train": factor_indices(dataset, factors, rng)}, factors={"train": factors})
        names = list(dataset.factor_names)  # type: ignore[attr-defined]
        chosen = names if self.chen_factors is None else list(self.chen_factors)
        unknown = [f for f in chosen if f not in names]
        if unknown:
            raise ConfigError(f"mig: unknown factor(s) {unknown} in chen_factors; the dataset's factors are {names}.")
        indices = np.arange(len(dataset))
        factors = dataset.index_to_factors(indices)[:, [names.index(f) for f in chosen]]  # type: ignore[attr-defined]
        return Draw(indices={"all": indices}, factors={"all": factors})

    def score(self, draw: Draw, encoded: dict[str, Encoded], rng: np.random.Generator) -> dict[str, float]:
        if self.variant == "protocol":
            return mig_from_codes(encoded["train"].codes, draw.factors["train"], self.num_bins)
        posterior = encoded["all"]
        return mig_chen_from_posterior(posterior.mu, posterior.logvar, draw.factors["all"], rng, self.chen_num_samples)  # type: ignore[arg-type]


def mig(dataset: ImageDataset, encode: Encode, rng: np.random.Generator | int = 0, *,
        num_train: int = MIG.num_train, num_bins: int = MIG.num_bins, variant: str = MIG.variant,
        chen_factors: tuple[str, ...] | None = MIG.chen_factors, chen_num_samples: int = MIG.chen_num_samples,
        batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
    """Mutual Information Gap (Chen et al. 2018) of ``encode`` on ``dataset``: ``{"mig"}`` in [0, 1]."""
    metric = MIG(num_train=num_train, num_bins=num_bins, variant=variant, chen_factors=chen_factors,
                 chen_num_samples=chen_num_samples)
    return metric.compute(dataset, encode, rng, batch_size)
