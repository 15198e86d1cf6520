"""What a trained code says about the ground-truth factors, for the report's factor sections.

* :func:`sample_codes`: posterior means of images drawn uniformly from a dataset with factors.
* :func:`mutual_information_matrix`: I(z_i; v_k) in nats between each code dim and each factor.
  Estimated as in MIG (Chen et al. 2018) under the disentanglement_lib protocol (Locatello et al.
  2019): each code dim is cut into 20 equal-width bins over its range and the mutual information is
  the plug-in estimate of the joint histogram; the maths is the metrics package's, not a copy.
* :func:`code_factor_information`: both of the above for a model and a dataset.
* :func:`pair_angles`, :func:`rotated_pairs`: pairs of factors that two dims follow, and those of
  them whose dims are turned away from the factors.
* :func:`mean_code_by_factor`: each dim's mean (and spread) over the images with each factor value,
  the data of the latent-vs-factor plot.
* :func:`factors_in_reconstructions`: which factors a reconstruction shows, read back by the nearest
  image of the dataset that differs from the input in one factor alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from betavae.data.base import FactorDataset
from betavae.errors import DataError
from betavae.metrics.utils import NUM_BINS, discrete_entropy, discrete_mutual_info, histogram_discretize
from betavae.models.vae import VAE
from betavae.objectives.likelihoods import decoded_mean

#: Images encoded for the factor sections.
MI_IMAGES = 5000
#: Images whose reconstructions :func:`factors_in_reconstructions` reads back.
READBACK_IMAGES = 1000


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


@dataclass
class CodeFactorInformation:
    """Posterior means of images drawn at random, beside their factors: what the report's factor
    sections and :func:`pair_angles` read. ``factors[:, varying]`` are the factors that take more
    than one value in the sample, named ``names``; ``mi`` ``(D, len(varying))`` their mutual
    information with each dim and ``entropies`` their entropies, in nats."""

    codes: np.ndarray
    factors: np.ndarray
    varying: list[int]
    names: list[str]
    mi: np.ndarray
    entropies: np.ndarray

    def pair_angles(self) -> list[dict]:
        return pair_angles(self.codes, self.factors[:, self.varying], self.names)

    def rotated_pairs(self) -> list[dict]:
        return rotated_pairs(self.codes, self.factors[:, self.varying], self.names)


def code_factor_information(model: VAE, dataset: FactorDataset, n: int = MI_IMAGES, seed: int = 0
                            ) -> CodeFactorInformation:
    """Encode ``n`` images drawn with ``seed`` and measure what each dim holds of each factor."""
    codes, factors = sample_codes(model, dataset, n, np.random.default_rng(seed))
    varying = [k for k, size in enumerate(dataset.factor_sizes) if size > 1 and len(np.unique(factors[:, k])) > 1]
    return CodeFactorInformation(codes, factors, varying, [dataset.factor_names[k] for k in varying],
                                 mutual_information_matrix(codes, factors[:, varying]),
                                 discrete_entropy(factors[:, varying]))


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


#: A pair of factors spread over two code dims is reported when it sits at least this many degrees
#: from the dims' axes. At 10° each dim carries only sin² 10° ≈ 3% of its variance from the other
#: factor, yet for a code of two 32-valued factors alone, binned as MIG bins it, a factor's share in
#: its dim falls from 0.85 at 0° to 0.48 (0.39 at 16°, 0.16 at 42°).
ROTATION_DEGREES = 10.0
#: Each of the two dims must follow the two factors linearly with at least this R²,
ROTATION_MIN_R2 = 0.5
#: and the fit must hold both factors: its smaller singular value at least this share of the larger.
ROTATION_MIN_BALANCE = 0.3
#: Factors with fewer values than this (categories such as shape) are not fitted linearly.
ROTATION_MIN_VALUES = 5


def rotated_pairs(codes: np.ndarray, factors: np.ndarray, names: list[str]) -> list[dict]:
    """The pairs of :func:`pair_angles` at ``ROTATION_DEGREES`` or more from the dims' axes."""
    return [pair for pair in pair_angles(codes, factors, names) if pair["angle"] >= ROTATION_DEGREES]


def pair_angles(codes: np.ndarray, factors: np.ndarray, names: list[str]) -> list[dict]:
    """Every pair of ordered factors that two code dims follow linearly, with its angle to the dims' axes.

    ``codes`` ``(n, D)`` posterior means, ``factors`` ``(n, K)`` class indices named ``names``.

    For each pair of factors with at least ``ROTATION_MIN_VALUES`` values each, every dim is fitted by
    least squares on the two factors' standardised class indices, and the two dims the pair explains
    best are kept when both fits reach ``ROTATION_MIN_R2``. Together they give ``z_ab ≈ B v + c``, and
    the rotation nearest to the 2 × 2 ``B`` (its polar factor) gives the pair's angle, folded to 0–45°
    because a dim's sign and the dims' order say nothing about disentanglement: 0° means each dim
    follows one factor, 45° that both dims follow both equally. The mutual information that MIG bins
    is no guide here: at small angles a factor's share in its second dim sinks into the estimator's
    bias, though the first dim already lost much of it. A pair is returned when ``B`` holds both
    factors (``ROTATION_MIN_BALANCE``), as
    ``{"factors": (name, name), "dims": (a, b), "angle": degrees, "r2": (r2_a, r2_b)}``.
    """
    n, dims_count = codes.shape
    if dims_count < 2 or n < 3:
        return []
    ordered = [k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) >= ROTATION_MIN_VALUES]
    centred = codes - codes.mean(0)
    total = (centred ** 2).sum(0)  # (D,)
    found = []
    for i, k in enumerate(ordered):
        for m in ordered[i + 1:]:
            values = factors[:, [k, m]].astype(np.float64)
            design = (values - values.mean(0)) / values.std(0)  # (n, 2), centred like the codes
            coef, *_ = np.linalg.lstsq(design, centred, rcond=None)  # (2, D)
            residual = ((centred - design @ coef) ** 2).sum(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                r2 = np.where(total > 0, 1.0 - residual / total, 0.0)
            a, b = (int(d) for d in np.argsort(r2)[::-1][:2])
            if min(r2[a], r2[b]) < ROTATION_MIN_R2:
                continue
            mixing = coef[:, [a, b]].T  # (2 dims, 2 factors)
            u, singular, vt = np.linalg.svd(mixing)
            if singular[1] < ROTATION_MIN_BALANCE * singular[0]:
                continue
            rotation = u @ vt  # orthogonal; a reflection (a dim's sign flipped) folds to the same angle below
            turn = float(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))) % 90.0
            dims = (min(a, b), max(a, b))
            found.append({"factors": (names[k], names[m]), "dims": dims, "angle": min(turn, 90.0 - turn),
                          "r2": (float(r2[dims[0]]), float(r2[dims[1]]))})
    return found


def rotation_sentence(pair: dict) -> str:
    """One finding of :func:`rotated_pairs` in words (plain text)."""
    (f, g), (a, b) = pair["factors"], pair["dims"]
    return (f"{f} and {g} share z{a} and z{b}, turned {pair['angle']:.0f}° from the dims' axes, so each of the two "
            f"dims moves with both factors")


@torch.no_grad()
def factors_in_reconstructions(model: VAE, dataset: FactorDataset, n: int = READBACK_IMAGES, seed: int = 0,
                               batch_size: int = 100) -> list[dict]:
    """Which factors the reconstructions show: for each factor ``k`` (of two values or more), the fraction of ``n``
    images drawn with ``seed`` whose reconstruction (decoded from the posterior mean) is nearer, in squared error,
    to the input than to every other image of the dataset that differs from the input in factor ``k`` alone.
    Images identical to the input (a square turned a quarter turn) are not counted as other images.

    A reconstruction that draws a heart as a blob is still read as a heart if the blob is nearer to the heart
    than to the square and the ellipse of the same position, scale and orientation; one that draws every shape
    as the same blob is read right for one shape in three. ``floor`` is the same fraction for a reconstruction
    that ignores the code: the mean of the ``n`` images, the same for every input. Needs a full factor grid (one
    image per combination of factor values). Returns ``[{"factor", "values", "images", "accuracy", "floor"}]``.
    """
    if not dataset.is_full_grid:
        raise DataError(f"{dataset.name} is not a full factor grid, so the images that differ from an input in one "
                        "factor alone are not all known; reconstructions can be read back only on a full grid.")
    if n < 1:
        raise DataError(f"n must be at least 1, got {n}.")
    rng = np.random.default_rng(seed)
    factors = dataset.sample_factors(n, rng)
    inputs = dataset.images_from_factors(factors)  # (n, C, H, W)
    device = next(model.parameters()).device
    recons = []
    for start in range(0, n, batch_size):
        mu, _ = model.encode(torch.from_numpy(inputs[start: start + batch_size]).to(device))
        recons.append(decoded_mean(model.decode(mu)).float().cpu().numpy())
    recon = np.concatenate(recons).reshape(n, -1)
    flat = inputs.reshape(n, -1)
    mean = flat.mean(0, keepdims=True)
    results = []
    for k, size in enumerate(dataset.factor_sizes):
        if size < 2:
            continue
        right = np.zeros(n, dtype=bool)
        floor_right = np.zeros(n, dtype=bool)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            varied = np.repeat(factors[start:stop], size, axis=0)  # (b * size, K): each input with every value of k
            varied[:, k] = np.tile(np.arange(size), stop - start)
            others = dataset.images_from_factors(varied).reshape(stop - start, size, -1)
            differs = ((others - flat[start:stop, None]) ** 2).sum(-1) > 0  # (b, size): not the input itself
            for guess, hits in ((recon[start:stop], right), (np.broadcast_to(mean, (stop - start, mean.shape[1])),
                                                              floor_right)):
                to_others = ((others - guess[:, None]) ** 2).sum(-1)  # (b, size)
                to_input = ((flat[start:stop] - guess) ** 2).sum(-1)  # (b,)
                nearest_other = np.where(differs, to_others, np.inf).min(1)
                hits[start:stop] = to_input < nearest_other
        results.append({"factor": dataset.factor_names[k], "values": int(size), "images": int(n),
                        "accuracy": round(float(right.mean()), 4), "floor": round(float(floor_right.mean()), 4)})
    return results
