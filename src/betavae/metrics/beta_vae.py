"""BetaVAE score (Higgins et al. 2017, "β-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework", ICLR 2017, the "disentanglement metric" section), as in the disentanglement_lib
protocol.

A training point: choose a factor k; draw two groups of ``group_size`` factor vectors; copy factor k
of the first group into the second; the feature is the mean over the pairs of |r(x1) - r(x2)| and
the label is k. A linear classifier (logistic regression, scikit-learn defaults) predicts k; the
score is its accuracy on held-out points. In a disentangled code the fixed factor's dimension has
the smallest difference, so the label is linearly readable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from betavae.data.base import ImageDataset
from betavae.errors import DataError
from betavae.metrics.base import (DEFAULT_BATCH_SIZE, Draw, Encode, Encoded, Metric, factor_indices, sample_factors,
                                  sample_factors_fixing)
from betavae.metrics.utils import check_codes, child_seed


def _draw_points(dataset: ImageDataset, rng: np.random.Generator, num_points: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(P, 2, B)`` of the paired groups and their labels ``(P,)``."""
    labels = rng.integers(0, dataset.num_factors, size=num_points)  # type: ignore[attr-defined]
    first = sample_factors(dataset, rng, (num_points, group_size))  # (P, B, K)
    shared = first[np.arange(num_points), :, labels]  # (P, B): the labelled factor of each pair
    second = sample_factors_fixing(dataset, rng, labels, shared)  # same labelled factor, the rest redrawn
    return factor_indices(dataset, np.stack([first, second], axis=1), rng), labels  # (P, 2, B), (P,)


def _features(codes: np.ndarray, what: str) -> np.ndarray:
    """Mean absolute difference over each point's pairs: ``(P, 2, B, D) -> (P, D)``."""
    codes = np.asarray(codes)
    if codes.ndim != 4 or codes.shape[1] != 2:
        raise DataError(f"{what} must have shape (points, 2, group_size, D), got {codes.shape}.")
    check_codes(codes.reshape(-1, codes.shape[-1]), what)
    return np.mean(np.abs(codes[:, 0].astype(np.float64) - codes[:, 1]), axis=1)


def beta_vae_score_from_codes(codes_train: np.ndarray, labels_train: np.ndarray, codes_eval: np.ndarray,
                              labels_eval: np.ndarray, random_state: int = 0) -> dict[str, float]:
    """BetaVAE score from paired codes ``(P, 2, B, D)`` and fixed-factor labels ``(P,)``.

    Returns ``train_accuracy`` and ``eval_accuracy`` (the score) of the logistic regression.
    """
    x_train, x_eval = _features(codes_train, "codes_train"), _features(codes_eval, "codes_eval")
    y_train, y_eval = np.asarray(labels_train).reshape(-1), np.asarray(labels_eval).reshape(-1)
    if len(y_train) != len(x_train) or len(y_eval) != len(x_eval):
        raise DataError(
            f"codes and labels have different lengths ({len(x_train)} vs {len(y_train)} train, "
            f"{len(x_eval)} vs {len(y_eval)} eval); pass one label per point."
        )
    if x_train.shape[1] != x_eval.shape[1]:
        raise DataError("codes_train and codes_eval have different widths; use the same encoder for both.")
    if len(np.unique(y_train)) < 2:
        raise DataError("the training points cover a single factor; draw more points (num_train).")
    model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=100, random_state=random_state)
    with warnings.catch_warnings():  # the protocol keeps the default 100 iterations, converged or not
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    return {
        "train_accuracy": float(np.mean(model.predict(x_train) == y_train)),
        "eval_accuracy": float(np.mean(model.predict(x_eval) == y_eval)),
    }


@dataclass(frozen=True)
class BetaVAEScore(Metric):
    """Protocol parameters: 10,000 training and 5,000 evaluation points of 64 pairs each."""

    name: ClassVar[str] = "beta_vae_score"
    primary_value: ClassVar[str] = "eval_accuracy"
    group_size: int = 64
    num_train: int = 10_000
    num_eval: int = 5_000

    def draw(self, dataset: ImageDataset, rng: np.random.Generator) -> Draw:
        train, train_labels = _draw_points(dataset, rng, self.num_train, self.group_size)
        evaluation, eval_labels = _draw_points(dataset, rng, self.num_eval, self.group_size)
        return Draw(indices={"train": train, "eval": evaluation}, labels={"train": train_labels, "eval": eval_labels})

    def score(self, draw: Draw, encoded: dict[str, Encoded], rng: np.random.Generator) -> dict[str, float]:
        return beta_vae_score_from_codes(encoded["train"].codes, draw.labels["train"], encoded["eval"].codes,
                                         draw.labels["eval"], random_state=child_seed(rng))


def beta_vae_score(dataset: ImageDataset, encode: Encode, rng: np.random.Generator | int = 0, *,
                   group_size: int = BetaVAEScore.group_size, num_train: int = BetaVAEScore.num_train,
                   num_eval: int = BetaVAEScore.num_eval, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
    """BetaVAE score (Higgins et al. 2017) of ``encode`` on ``dataset``.

    ``encode`` maps float32 images ``(n, C, H, W)`` to codes ``(n, D)``. Returns ``eval_accuracy``
    (the score, in [0, 1]) and ``train_accuracy``.
    """
    metric = BetaVAEScore(group_size=group_size, num_train=num_train, num_eval=num_eval)
    return metric.compute(dataset, encode, rng, batch_size)
