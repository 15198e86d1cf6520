"""What a trained code says about the ground-truth factors, for the report's factor sections.

* :func:`sample_codes`: posterior means of images drawn uniformly from a dataset with factors.
* :func:`mutual_information_matrix`: I(z_i; v_k) in nats between each code dim and each factor.
  Estimated as in MIG (Chen et al. 2018) under the disentanglement_lib protocol (Locatello et al.
  2019): each code dim is cut into 20 equal-width bins over its range and the mutual information is
  the plug-in estimate of the joint histogram. The metrics package's implementation is used when
  it is installed; :func:`histogram_mutual_information` is the same estimate, self-contained.
* :func:`mean_code_by_factor`: each dim's mean (and spread) over the images with each factor value,
  the data of the latent-vs-factor plot.
"""

from __future__ import annotations

import numpy as np
import torch

from betavae.data.base import FactorDataset
from betavae.models.vae import VAE

#: Images encoded for the factor sections.
MI_IMAGES = 5000
#: Equal-width bins per code dim for the mutual information (the protocol's value).
NUM_BINS = 20


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


def histogram_discretize(codes: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """Bin labels ``(N, D)`` in 1..num_bins: each column cut into equal-width bins over its range."""
    binned = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram(codes[:, d], bins=num_bins)[1]
        binned[:, d] = np.digitize(codes[:, d], edges[:-1])
    return binned


def _plugin_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Σ p(a, b) log(p(a, b) / (p(a) p(b))) in nats for two label vectors."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    a, b = a.reshape(-1), b.reshape(-1)
    na, nb = a.max() + 1, b.max() + 1
    joint = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb) / len(a)
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float(max(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])), 0.0))


def histogram_mutual_information(codes: np.ndarray, factors: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """I(z_i; v_k) ``(D, K)`` in nats: 20-bin histogram of each code dim, plug-in estimate."""
    binned = histogram_discretize(np.asarray(codes, dtype=np.float64), num_bins)
    return np.array([[_plugin_mutual_information(binned[:, i], factors[:, k]) for k in range(factors.shape[1])]
                     for i in range(binned.shape[1])])


def mutual_information_matrix(codes: np.ndarray, factors: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """I(z_i; v_k) ``(D, K)`` in nats, by the metrics package's discretised estimate when present."""
    try:
        from betavae.metrics.utils import discrete_mutual_info
        from betavae.metrics.utils import histogram_discretize as metrics_discretize
    except ImportError:
        return histogram_mutual_information(codes, factors, num_bins)
    return discrete_mutual_info(metrics_discretize(codes, num_bins), factors)


def factor_entropies(factors: np.ndarray) -> np.ndarray:
    """Plug-in entropy H(v_k) in nats of each factor column ``(K,)``: the most any dim can share with it."""
    entropies = []
    for k in range(factors.shape[1]):
        p = np.unique(factors[:, k], return_counts=True)[1] / len(factors)
        entropies.append(float(-np.sum(p * np.log(p))))
    return np.array(entropies)


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
