"""Modularity and explicitness (Ridgeway & Mozer 2018, "Learning Deep Disentangled Embeddings With
the F-Statistic Loss", NeurIPS 2018, the modularity and explicitness definitions), as in the disentanglement_lib protocol.

Modularity: a code dimension is modular when it carries information about one factor only. With
m_ij the mutual information of code i (20 equal-width bins) and factor j, θ_i = max_j m_ij and t_i
the template with θ_i at the arg-max and 0 elsewhere,

    δ_i = Σ_j (m_ij - t_ij)² / (θ_i² (K - 1)),   modularity = mean_i (1 - δ_i)

(0 for a dimension with no information). Explicitness: a logistic regression per factor on the
standardised codes; the one-vs-rest ROC-AUC, averaged over classes and then factors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from betavae.data.base import ImageDataset
from betavae.errors import ConfigError
from betavae.metrics.base import DEFAULT_BATCH_SIZE, Draw, Encode, Encoded, TrainTestMetric
from betavae.metrics.utils import (NUM_BINS, check_codes_factors, check_same_dims, child_seed,
                                   discrete_mutual_info, histogram_discretize)


def modularity(mutual_info: np.ndarray) -> float:
    """Modularity (Ridgeway & Mozer 2018) of a mutual-information matrix ``(D, K)``."""
    squared = np.asarray(mutual_info, dtype=np.float64) ** 2
    best = squared.max(axis=1)
    num_factors = squared.shape[1]
    if num_factors == 1:  # one factor: every informative code is modular
        return float(np.mean(best > 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (squared.sum(axis=1) - best) / (best * (num_factors - 1))
    per_code = np.where(best > 0, 1.0 - delta, 0.0)
    return float(np.mean(per_code))


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for boolean labels ``positive`` (ties count half).

    The Mann-Whitney form, (rank sum of positives - n+(n+ + 1)/2) / (n+ n-), with average ranks for
    ties: equal to ``sklearn.metrics.roc_auc_score`` and much cheaper to call hundreds of times.
    """
    ranks = rankdata(scores)
    n_pos = int(np.sum(positive))
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean_auc(y: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """One-vs-rest ROC-AUC averaged over the classes that have positives and negatives in ``y``."""
    scores = [roc_auc(y == c, probabilities[:, col]) for col, c in enumerate(classes)
              if 0 < np.sum(y == c) < len(y)]
    return float(np.mean(scores)) if scores else 0.5


def explicitness(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                 factors_test: np.ndarray, random_state: int = 0) -> tuple[float, float]:
    """Mean ROC-AUC of a logistic regression per factor on standardised codes: ``(train, test)``."""
    mean, std = codes_train.mean(axis=0), codes_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant code carries nothing; avoid 0/0
    x_train, x_test = (codes_train - mean) / std, (codes_test - mean) / std
    train, test = [], []
    for j in range(factors_train.shape[1]):
        y_train, y_test = factors_train[:, j], factors_test[:, j]
        classes = np.unique(y_train)
        if len(classes) == 1:
            train.append(0.5), test.append(0.5)
            continue
        model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=100, random_state=random_state)
        with warnings.catch_warnings():  # the protocol keeps the default 100 iterations
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train, y_train)
        train.append(_mean_auc(y_train, model.predict_proba(x_train), model.classes_))
        test.append(_mean_auc(y_test, model.predict_proba(x_test), model.classes_))
    return float(np.mean(train)), float(np.mean(test))


def modularity_explicitness_from_codes(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                                       factors_test: np.ndarray, num_bins: int = NUM_BINS,
                                       random_state: int = 0) -> dict[str, float]:
    """Modularity (on the training codes) and explicitness from codes ``(N, D)`` and factors ``(N, K)``.

    Returns ``modularity``, ``explicitness_train`` and ``explicitness_test``, each in [0, 1].
    """
    codes_train, factors_train = check_codes_factors(codes_train, factors_train, "train")
    codes_test, factors_test = check_codes_factors(codes_test, factors_test, "test")
    check_same_dims(codes_train, codes_test, "codes")
    check_same_dims(factors_train, factors_test, "factors")
    mutual_info = discrete_mutual_info(histogram_discretize(codes_train, num_bins), factors_train)
    explicit_train, explicit_test = explicitness(codes_train, factors_train, codes_test, factors_test, random_state)
    return {"modularity": modularity(mutual_info), "explicitness_train": explicit_train,
            "explicitness_test": explicit_test}


@dataclass(frozen=True)
class ModularityExplicitness(TrainTestMetric):
    """Protocol parameters: 10,000 training and 5,000 test samples, 20 bins."""

    name: ClassVar[str] = "modularity_explicitness"
    primary_value: ClassVar[str] = "modularity"
    num_train: int = 10_000
    num_test: int = 5_000
    num_bins: int = NUM_BINS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_bins < 2:
            raise ConfigError(f"modularity_explicitness: num_bins must be at least 2, got {self.num_bins}.")

    def score(self, draw: Draw, encoded: dict[str, Encoded], rng: np.random.Generator) -> dict[str, float]:
        return modularity_explicitness_from_codes(encoded["train"].codes, draw.factors["train"], encoded["test"].codes,
                                                  draw.factors["test"], self.num_bins, child_seed(rng))


def modularity_explicitness(dataset: ImageDataset, encode: Encode, rng: np.random.Generator | int = 0, *,
                            num_train: int = ModularityExplicitness.num_train,
                            num_test: int = ModularityExplicitness.num_test,
                            num_bins: int = ModularityExplicitness.num_bins,
                            batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
    """Modularity and explicitness (Ridgeway & Mozer 2018) of ``encode`` on ``dataset``."""
    metric = ModularityExplicitness(num_train=num_train, num_test=num_test, num_bins=num_bins)
    return metric.compute(dataset, encode, rng, batch_size)
