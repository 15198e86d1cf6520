"""Array maths and input checks shared by every metric.

The discretisation and the discrete mutual information follow the disentanglement_lib protocol
(Locatello et al. 2019, ``evaluation/metrics/utils.py``): each code dimension is cut into 20
equal-width bins and mutual information is the plug-in estimate, in nats, of the joint histogram.
"""

from __future__ import annotations

import zlib

import numpy as np

from betavae.errors import DataError

#: Bins per code dimension for the histogram mutual-information estimates (protocol value).
NUM_BINS = 20


def as_generator(rng: np.random.Generator | int) -> np.random.Generator:
    """``rng`` itself, or a new generator seeded with the integer ``rng``."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(int(rng))


def metric_rng(seed: int, name: str) -> np.random.Generator:
    """The generator ``evaluate`` gives metric ``name`` for ``seed``.

    Keyed by the metric's name, so a metric's value does not depend on which others run with it.
    """
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def child_seed(rng: np.random.Generator) -> int:
    """An integer seed for a scikit-learn estimator, drawn from ``rng``."""
    return int(rng.integers(0, 2**31 - 1))


def check_codes(codes: np.ndarray, what: str = "codes") -> np.ndarray:
    """``codes`` as a finite float64 array ``(N, D)``; raises :class:`DataError` otherwise."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise DataError(f"{what} must be a non-empty 2-D array (N samples, D dims), got shape {codes.shape}.")
    if not np.issubdtype(codes.dtype, np.number) or np.issubdtype(codes.dtype, np.complexfloating):
        raise DataError(f"{what} must be real numbers, got dtype {codes.dtype}.")
    codes = codes.astype(np.float64, copy=False)
    if not np.all(np.isfinite(codes)):
        bad = int(np.sum(~np.all(np.isfinite(codes), axis=1)))
        raise DataError(
            f"{what} contain NaN or Inf in {bad} of {len(codes)} rows; the encoder produced non-finite "
            "values: check the model weights (retrain or load an earlier checkpoint)."
        )
    return codes


def check_factors(factors: np.ndarray, num_rows: int, what: str = "factors") -> np.ndarray:
    """``factors`` as int64 class indices ``(N, K)`` with ``N == num_rows``."""
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[1] == 0:
        raise DataError(f"{what} must be a 2-D array (N samples, K factors), got shape {factors.shape}.")
    if len(factors) != num_rows:
        raise DataError(
            f"codes and {what} have different lengths ({num_rows} and {len(factors)}); pass one factor "
            "row per code row."
        )
    if not np.issubdtype(factors.dtype, np.integer):
        if not np.issubdtype(factors.dtype, np.floating) or not np.all(np.isfinite(factors)) or np.any(factors != np.round(factors)):
            raise DataError(
                f"{what} must be integer class indices, got dtype {factors.dtype} with non-integer values; "
                "convert factor values to class indices (e.g. with np.unique(..., return_inverse=True))."
            )
    factors = factors.astype(np.int64)
    if np.any(factors < 0):
        raise DataError(f"{what} must be non-negative class indices; shift or re-index the factors.")
    return factors


def check_codes_factors(codes: np.ndarray, factors: np.ndarray, split: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(codes, factors)`` of matching length; ``split`` names them in messages."""
    suffix = f"_{split}" if split else ""
    codes = check_codes(codes, f"codes{suffix}")
    return codes, check_factors(factors, len(codes), f"factors{suffix}")


def check_same_dims(train: np.ndarray, test: np.ndarray, what: str) -> None:
    """Train and test arrays must have the same number of columns."""
    if train.shape[1] != test.shape[1]:
        raise DataError(
            f"{what}_train and {what}_test have different widths ({train.shape[1]} and {test.shape[1]}); "
            "use the same encoder and dataset for both."
        )


def histogram_discretize(codes: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """Bin each code dimension into ``num_bins`` equal-width bins over its range: ints ``(N, D)``.

    As the protocol: ``digitize(x, histogram(x, num_bins) edges[:-1])``, giving bins 1..num_bins (the
    maximum falls in the last bin; a constant dimension falls in one bin).
    """
    codes = np.asarray(codes, dtype=np.float64)
    out = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram(codes[:, d], bins=num_bins)[1]
        out[:, d] = np.digitize(codes[:, d], edges[:-1])
    return out


def _relabel(column: np.ndarray) -> tuple[np.ndarray, int]:
    """Consecutive labels 0..n-1 for the values of ``column`` and the count n."""
    values, inverse = np.unique(column, return_inverse=True)
    return inverse.reshape(-1), len(values)


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Plug-in mutual information (nats) of two discrete label vectors of equal length.

    I(X; Y) = Σ p(x, y) log(p(x, y) / (p(x) p(y))), the same estimate as
    ``sklearn.metrics.mutual_info_score``.
    """
    a, na = _relabel(np.asarray(x))
    b, nb = _relabel(np.asarray(y))
    if na == 1 or nb == 1:  # a constant carries no information (exactly 0, not rounding noise)
        return 0.0
    n = len(a)
    joint = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).astype(np.float64)
    nonzero = joint > 0
    pa = joint.sum(axis=1, keepdims=True)
    pb = joint.sum(axis=0, keepdims=True)
    # p(x,y) log(p(x,y) / (p(x) p(y))) with counts: (c/n) log(c n / (ca cb))
    c = joint[nonzero]
    value = np.sum(c / n * (np.log(c) + np.log(n) - np.log((pa * pb)[nonzero])))
    return float(max(value, 0.0))  # clip float rounding below zero


def discrete_mutual_info(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Matrix ``m[i, j]`` = mutual information (nats) of discrete codes ``(N, D)`` and factors ``(N, K)``."""
    m = np.zeros((codes.shape[1], factors.shape[1]))
    for i in range(codes.shape[1]):
        for j in range(factors.shape[1]):
            m[i, j] = mutual_information(codes[:, i], factors[:, j])
    return m


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """Plug-in entropy (nats) of each column of ``factors`` ``(N, K)``: ``H_j = I(y_j; y_j)``."""
    h = np.zeros(factors.shape[1])
    for j in range(factors.shape[1]):
        counts = np.unique(factors[:, j], return_counts=True)[1]
        p = counts / counts.sum()
        h[j] = float(-np.sum(p * np.log(p)))
    return h


def entropy_normalized(weights: np.ndarray, axis: int) -> np.ndarray:
    """Entropy of ``weights`` normalised to sum 1 along ``axis``, in base = length of ``axis``.

    As ``scipy.stats.entropy(weights + 1e-11, base=n)`` in the protocol's DCI; a length-1 axis has
    entropy 0 (one outcome).
    """
    p = np.asarray(weights, dtype=np.float64) + 1e-11
    p = p / p.sum(axis=axis, keepdims=True)
    n = p.shape[axis]
    h = -np.sum(p * np.log(p), axis=axis)
    return h / np.log(n) if n > 1 else np.zeros_like(h)
