"""What a trained code says about the ground-truth factors, for the report's factor sections.

* :func:`sample_codes`: posterior means of images drawn uniformly from a dataset with factors.
* :func:`mutual_information_matrix`: I(z_i; v_k) in nats between each code dim and each factor.
  Estimated as in MIG (Chen et al. 2018) under the disentanglement_lib protocol (Locatello et al.
  2019): each code dim is cut into 20 equal-width bins over its range and the mutual information is
  the plug-in estimate of the joint histogram; the maths is the metrics package's, not a copy.
* :func:`mean_code_by_factor`: each dim's mean (and spread) over the images with each factor value,
  the data of the latent-vs-factor plot.
"""

from __future__ import annotations

import numpy as np
import torch

from betavae.data.base import FactorDataset
from betavae.metrics.utils import NUM_BINS, discrete_mutual_info, histogram_discretize
from betavae.models.vae import VAE

#: Images encoded for the factor sections.
MI_IMAGES = 5000


@torch.no_grad()
def sample_codes(model: VAE, dataset: FactorDataset, n: int, rng: np.random.Generator,
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, factors)``: posterior means ``(n, D)`` and factor class indices ``(n, K)`` of ``n``
    images drawn uniformly (with replacement) from ``dataset``."""
    indices = np.sort(rng.integers(0, len(dataset), size=n))
    device = next(model.parameters()).device
    codes = []
    for start in range(0, n, batch_size):
        images = dataset.images(indices[start: start + batch_size])  # (b, C, H, W)
        mu, _ = model.encode(torch.from_numpy(images).to(device))
        codes.append(mu.float().cpu().numpy())
    return np.concatenate(codes).astype(np.float64), dataset.index_to_factors(indices)


def mutual_information_matrix(codes: np.ndarray, factors: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """I(z_i; v_k) ``(D, K)`` in nats: MIG's discretised plug-in estimate (:mod:`betavae.metrics.utils`)."""
    return discrete_mutual_info(histogram_discretize(codes, num_bins), factors)


def mean_code_by_factor(codes: np.ndarray, factors: np.ndarray, factor_sizes: tuple[int, ...]
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each factor k: ``(mean, std)``, each ``(D, factor_sizes[k])``, of every code dim over the
    images whose factor k has each class (NaN for a class no image has)."""
    result = []
    for k, size in enumerate(factor_sizes):
        counts = np.bincount(factors[:, k], minlength=size).astype(np.float64)  # (size,)
        with np.errstate(invalid="ignore", divide="ignore"):
            sums = np.stack([np.bincount(factors[:, k], weights=codes[:, d], minlength=size) for d in range(codes.shape[1])])
            squares = np.stack([np.bincount(factors[:, k], weights=codes[:, d] ** 2, minlength=size)
                                for d in range(codes.shape[1])])
            mean = sums / counts
            std = np.sqrt(np.maximum(squares / counts - mean ** 2, 0.0))
        result.append((mean, std))
    return result
