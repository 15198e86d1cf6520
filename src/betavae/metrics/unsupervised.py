"""Unsupervised measures of a representation: they need images only, no factors.

* ``gaussian_total_correlation``: total correlation of a Gaussian with the codes' covariance Σ,
  TC = ½ (Σ_i log Σ_ii - log det Σ) (Watanabe 1960; the Gaussian form as in disentanglement_lib's
  unsupervised metrics, Locatello et al. 2019). 0 for uncorrelated codes; dimensions with zero
  variance are left out (they are independent of everything).
* ``gaussian_wasserstein_correlation``: 2 tr Σ - 2 tr (diag(Σ)^½ Σ diag(Σ)^½)^½, the squared
  2-Wasserstein distance between N(0, Σ) and N(0, diag Σ); ``_norm`` divides it by tr Σ.
* ``mutual_info_score``: mean over pairs of distinct dimensions of their discrete mutual
  information (20 equal-width bins), in nats.
* ``active_units``: dimensions whose mean code varies across images, Var_x(E[z_d | x]) > 0.01
  (Burda et al. 2016, "Importance Weighted Autoencoders", ICLR 2016).
* ``kl_dim_<d>`` and ``kl_total`` (only with an encoder from ``encoder_fn``): the mean over images
  of KL(q(z_d | x) ‖ N(0, 1)) = ½ (mu² + σ² - log σ² - 1), per dimension and summed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from betavae.data.base import ImageDataset
from betavae.errors import DataError
from betavae.metrics.base import DEFAULT_BATCH_SIZE, Draw, Encode, Encoded, Metric
from betavae.metrics.utils import NUM_BINS, check_codes, discrete_mutual_info, histogram_discretize


def gaussian_total_correlation(cov: np.ndarray) -> float:
    """½ (Σ log diag(cov) - log det cov) over the dimensions with positive variance (nats)."""
    keep = np.diag(cov) > 0
    cov = cov[np.ix_(keep, keep)]
    if len(cov) == 0:
        return 0.0
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0:  # exactly dependent dimensions: a degenerate Gaussian has infinite TC
        return float("inf")
    return float(max(0.5 * (np.sum(np.log(np.diag(cov))) - logdet), 0.0))


def gaussian_wasserstein_correlation(cov: np.ndarray) -> float:
    """2 tr Σ - 2 tr sqrt(diag(Σ)^½ Σ diag(Σ)^½), via the eigenvalues of the symmetric form."""
    root = np.sqrt(np.diag(cov))
    eigenvalues = np.linalg.eigvalsh(root[:, None] * cov * root[None, :])
    return float(2.0 * np.trace(cov) - 2.0 * np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def unsupervised_from_codes(codes: np.ndarray, mu: np.ndarray | None = None, logvar: np.ndarray | None = None,
                            num_bins: int = NUM_BINS, active_threshold: float = 0.01) -> dict[str, float]:
    """Unsupervised measures of codes ``(N, D)``; the KL terms when ``mu`` and ``logvar`` are given.

    ``active_units`` uses ``mu`` when given (the mean code), else ``codes``.
    """
    codes = check_codes(codes)
    if len(codes) < 2:
        raise DataError("unsupervised measures need at least 2 codes to estimate a covariance; raise num_train.")
    num_dims = codes.shape[1]
    cov = np.atleast_2d(np.cov(codes, rowvar=False, ddof=1))
    trace = float(np.trace(cov))
    wasserstein = gaussian_wasserstein_correlation(cov)
    if num_dims > 1:
        mutual_info = discrete_mutual_info(*(2 * [histogram_discretize(codes, num_bins)]))
        np.fill_diagonal(mutual_info, 0.0)
        mi_score = float(mutual_info.sum() / (num_dims * num_dims - num_dims))
    else:
        mi_score = 0.0
    results = {
        "gaussian_total_correlation": gaussian_total_correlation(cov),
        "gaussian_wasserstein_correlation": wasserstein,
        "gaussian_wasserstein_correlation_norm": wasserstein / trace if trace > 0 else 0.0,
        "mutual_info_score": mi_score,
    }
    if (mu is None) != (logvar is None):
        raise DataError("pass both mu and logvar (the posterior) or neither.")
    means = codes if mu is None else check_codes(mu, "mu")
    if len(means) != len(codes) or means.shape[1] != num_dims:
        raise DataError(f"mu has shape {means.shape} but codes have {codes.shape}; pass both from one encoder.")
    results["active_units"] = float(np.sum(np.var(means, axis=0) > active_threshold))
    if logvar is not None:
        logvar = check_codes(logvar, "logvar")
        if logvar.shape != means.shape:
            raise DataError(f"logvar has shape {logvar.shape} but mu has {means.shape}; pass both from one encoder.")
        kl = 0.5 * np.mean(means**2 + np.exp(logvar) - logvar - 1.0, axis=0)  # (D,)
        results.update({f"kl_dim_{d}": float(v) for d, v in enumerate(kl)})
        results["kl_total"] = float(kl.sum())
    return results


@dataclass(frozen=True)
class Unsupervised(Metric):
    """10,000 images drawn uniformly from the dataset (factors not needed)."""

    name: ClassVar[str] = "unsupervised"
    primary_value: ClassVar[str] = "gaussian_total_correlation"
    needs_factors: ClassVar[bool] = False
    num_train: int = 10_000
    num_bins: int = NUM_BINS
    active_threshold: float = 0.01

    @property
    def uses_posterior(self) -> bool:
        return True  # KL per dimension and active units from the mean

    def draw(self, dataset: ImageDataset, rng: np.random.Generator) -> Draw:
        return Draw(indices={"train": rng.integers(0, len(dataset), size=self.num_train)})

    def score(self, draw: Draw, encoded: dict[str, Encoded], rng: np.random.Generator) -> dict[str, float]:
        e = encoded["train"]
        return unsupervised_from_codes(e.codes, e.mu, e.logvar, self.num_bins, self.active_threshold)


def unsupervised(dataset: ImageDataset, encode: Encode, rng: np.random.Generator | int = 0, *,
                 num_train: int = Unsupervised.num_train, num_bins: int = Unsupervised.num_bins,
                 active_threshold: float = Unsupervised.active_threshold,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
    """Unsupervised measures (total correlation, mutual information, active units, KL per dimension)."""
    metric = Unsupervised(num_train=num_train, num_bins=num_bins, active_threshold=active_threshold)
    return metric.compute(dataset, encode, rng, batch_size)
