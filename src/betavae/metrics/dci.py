"""DCI: Disentanglement, Completeness, Informativeness (Eastwood & Williams 2018, "A Framework for
the Quantitative Evaluation of Disentangled Representations", ICLR 2018, definitions of D, C and I), as in
the disentanglement_lib protocol.

One classifier per factor predicts it from all codes; R[i, j] is the importance of code i for
factor j. With P_ij = R_ij / Σ_k R_ik:

    D_i = 1 - H_K(P_i·),  D = Σ_i ρ_i D_i,  ρ_i = Σ_j R_ij / Σ R          (disentanglement)
    C_j = 1 - H_D(P̃_·j), P̃_ij = R_ij / Σ_i R_ij, C = Σ_j (Σ_i R_ij / Σ R) C_j   (completeness)

(entropies in base K = number of factors and D = number of codes); informativeness is the mean
held-out accuracy of the classifiers (the paper uses prediction error of a regressor).

The classifier is the protocol's: scikit-learn's ``GradientBoostingClassifier`` at its defaults
(100 stages of depth-3 trees, learning rate 0.1, log-loss, exact splits) with its impurity-based
feature importances. ``implementation="betavae"`` (default) fits that model with
:mod:`betavae.metrics.boosting`, every factor at once, in seconds; ``implementation="scikit-learn"``
fits it with scikit-learn itself, one factor after another (about 7 minutes on dSprites on 2 CPU
cores). The two agree to within float rounding and the order in which exact ties between code
dimensions are broken (docs/metrics.md gives the measured differences).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

from betavae.data.base import ImageDataset
from betavae.errors import ConfigError
from betavae.metrics.boosting import fit_boosted_trees
from betavae.metrics.base import DEFAULT_BATCH_SIZE, Draw, Encode, Encoded, TrainTestMetric
from betavae.metrics.utils import check_codes_factors, check_same_dims, child_seed, entropy_normalized

IMPLEMENTATIONS = ("betavae", "scikit-learn")


def _check_implementation(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ConfigError(f"unknown DCI implementation '{implementation}'; choose one of: {', '.join(IMPLEMENTATIONS)}.")


def importance_matrix(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                      factors_test: np.ndarray, implementation: str = "betavae",
                      random_state: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``R`` ``(D, K)`` and the train and test accuracy ``(K,)`` of one boosted classifier per factor.

    ``random_state`` seeds the order in which each tree node visits the code dimensions (the only
    randomness of both fits: which of two exactly tied splits wins).
    """
    _check_implementation(implementation)
    codes_train, factors_train = check_codes_factors(codes_train, factors_train, "train")
    codes_test, factors_test = check_codes_factors(codes_test, factors_test, "test")
    check_same_dims(codes_train, codes_test, "codes")
    check_same_dims(factors_train, factors_test, "factors")
    num_factors = factors_train.shape[1]
    matrix = np.zeros((codes_train.shape[1], num_factors))
    train_accuracy, test_accuracy = np.zeros(num_factors), np.zeros(num_factors)
    varying = []
    for j in range(num_factors):
        if len(np.unique(factors_train[:, j])) == 1:  # a constant factor: predicted exactly, by no code
            train_accuracy[j] = 1.0
            test_accuracy[j] = float(np.mean(factors_test[:, j] == factors_train[0, j]))
        else:
            varying.append(j)
    if not varying:
        return matrix, train_accuracy, test_accuracy
    if implementation == "betavae":
        fit = fit_boosted_trees(codes_train, factors_train[:, varying], random_state=random_state)
        matrix[:, varying] = np.abs(fit.importances)
        train_accuracy[varying] = np.mean(fit.train_predictions == factors_train[:, varying], axis=0)
        test_accuracy[varying] = np.mean(fit.predict(codes_test) == factors_test[:, varying], axis=0)
        return matrix, train_accuracy, test_accuracy
    for j in varying:
        model = GradientBoostingClassifier(random_state=random_state).fit(codes_train, factors_train[:, j])
        matrix[:, j] = np.abs(model.feature_importances_)
        train_accuracy[j] = np.mean(model.predict(codes_train) == factors_train[:, j])
        test_accuracy[j] = np.mean(model.predict(codes_test) == factors_test[:, j])
    return matrix, train_accuracy, test_accuracy


def disentanglement(matrix: np.ndarray) -> float:
    """Importance-weighted mean over codes of 1 - H_K(P_i·) (Eastwood & Williams 2018)."""
    per_code = np.clip(1.0 - entropy_normalized(matrix, axis=1), 0.0, 1.0)
    if matrix.sum() == 0:
        matrix = np.ones_like(matrix)
    return float(np.sum(per_code * matrix.sum(axis=1) / matrix.sum()))


def completeness(matrix: np.ndarray) -> float:
    """Importance-weighted mean over factors of 1 - H_D(P̃_·j) (Eastwood & Williams 2018)."""
    per_factor = np.clip(1.0 - entropy_normalized(matrix, axis=0), 0.0, 1.0)
    if matrix.sum() == 0:
        matrix = np.ones_like(matrix)
    return float(np.sum(per_factor * matrix.sum(axis=0) / matrix.sum()))


def dci_from_codes(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                   factors_test: np.ndarray, implementation: str = "betavae",
                   random_state: int = 0) -> dict[str, float]:
    """DCI from codes ``(N, D)`` and factor class indices ``(N, K)``.

    Returns ``disentanglement``, ``completeness`` (in [0, 1]), ``informativeness_train`` and
    ``informativeness_test`` (mean classifier accuracy).
    """
    matrix, train_accuracy, test_accuracy = importance_matrix(
        codes_train, factors_train, codes_test, factors_test, implementation, random_state
    )
    return {
        "disentanglement": disentanglement(matrix),
        "completeness": completeness(matrix),
        "informativeness_train": float(np.mean(train_accuracy)),
        "informativeness_test": float(np.mean(test_accuracy)),
    }


@dataclass(frozen=True)
class DCI(TrainTestMetric):
    """Protocol parameters: 10,000 training and 5,000 test samples, gradient-boosted trees (fitted by
    ``implementation``: betavae's or scikit-learn's, the same model)."""

    name: ClassVar[str] = "dci"
    primary_value: ClassVar[str] = "disentanglement"
    num_train: int = 10_000
    num_test: int = 5_000
    implementation: str = "betavae"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_implementation(self.implementation)

    def score(self, draw: Draw, encoded: dict[str, Encoded], rng: np.random.Generator) -> dict[str, float]:
        return dci_from_codes(encoded["train"].codes, draw.factors["train"], encoded["test"].codes,
                              draw.factors["test"], self.implementation, child_seed(rng))


def dci(dataset: ImageDataset, encode: Encode, rng: np.random.Generator | int = 0, *,
        num_train: int = DCI.num_train, num_test: int = DCI.num_test, implementation: str = DCI.implementation,
        batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
    """DCI (Eastwood & Williams 2018) of ``encode`` on ``dataset``; see :func:`dci_from_codes`."""
    return DCI(num_train=num_train, num_test=num_test, implementation=implementation).compute(dataset, encode, rng, batch_size)
