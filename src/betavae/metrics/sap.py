"""Separated Attribute Predictability (Kumar et al. 2018, "Variational Inference of Disentangled
Latent Concepts from Unlabeled Observations", ICLR 2018, the SAP score definition), as in the disentanglement_lib protocol.

S[i, j] is how well code dimension i alone predicts factor j; SAP is the mean over factors of the
gap between the best and second best dimension. The paper scores continuous factors with R² of a
linear regression and discrete ones with classification accuracy. The protocol treats dSprites
factors as discrete: a linear SVM (C = 0.01, balanced class weights) trained on one dimension,
accuracy on held-out samples. ``continuous=True`` gives the paper's R² form,
S = cov(z_i, y_j)² / (var z_i · var y_j), on the training samples (0 where var z_i ≤ 1e-12).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from betavae.data.base import ImageDataset
from betavae.metrics.base import DEFAULT_BATCH_SIZE, Draw, Encode, Encoded, TrainTestMetric
from betavae.metrics.utils import check_codes_factors, check_same_dims, child_seed


def _accuracy_matrix(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                     factors_test: np.ndarray, random_state: int) -> np.ndarray:
    scores = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    for j in range(factors_train.shape[1]):
        classes = np.unique(factors_train[:, j])
        for i in range(codes_train.shape[1]):
            if len(classes) == 1:  # nothing to learn: predict the only class seen
                predicted = np.full(len(codes_test), classes[0])
            else:
                model = LinearSVC(C=0.01, class_weight="balanced", random_state=random_state)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    model.fit(codes_train[:, i : i + 1], factors_train[:, j])
                predicted = model.predict(codes_test[:, i : i + 1])
            scores[i, j] = np.mean(predicted == factors_test[:, j])
    return scores


def _r2_matrix(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    scores = np.zeros((codes.shape[1], factors.shape[1]))
    for i in range(codes.shape[1]):
        for j in range(factors.shape[1]):
            cov = np.cov(codes[:, i], factors[:, j].astype(np.float64), ddof=1)
            var_z, var_y = cov[0, 0], cov[1, 1]
            if var_z > 1e-12 and var_y > 0:
                scores[i, j] = cov[0, 1] ** 2 / (var_z * var_y)
    return scores


def sap_score_matrix(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                     factors_test: np.ndarray, continuous: bool = False, random_state: int = 0) -> np.ndarray:
    """The predictability matrix ``S`` ``(D, K)`` (Kumar et al. 2018)."""
    codes_train, factors_train = check_codes_factors(codes_train, factors_train, "train")
    codes_test, factors_test = check_codes_factors(codes_test, factors_test, "test")
    check_same_dims(codes_train, codes_test, "codes")
    check_same_dims(factors_train, factors_test, "factors")
    if continuous:
        return _r2_matrix(codes_train, factors_train)
    return _accuracy_matrix(codes_train, factors_train, codes_test, factors_test, random_state)


def sap_from_codes(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                   factors_test: np.ndarray, continuous: bool = False, random_state: int = 0) -> dict[str, float]:
    """SAP from codes ``(N, D)`` and factor class indices ``(N, K)``: ``{"sap"}`` in [0, 1]."""
    scores = sap_score_matrix(codes_train, factors_train, codes_test, factors_test, continuous, random_state)
    ranked = np.sort(scores, axis=0)
    second = ranked[-2] if len(ranked) > 1 else np.zeros(ranked.shape[1])
    return {"sap": float(np.mean(ranked[-1] - second))}


@dataclass(frozen=True)
class SAP(TrainTestMetric):
    """Protocol parameters: 10,000 training and 5,000 test samples, discrete factors."""

    name: ClassVar[str] = "sap"
    primary_value: ClassVar[str] = "sap"
    num_train: int = 10_000
    num_test: int = 5_000
    continuous: bool = False

    def score(self, draw: Draw, encoded: dict[str, Encoded], rng: np.random.Generator) -> dict[str, float]:
        return sap_from_codes(encoded["train"].codes, draw.factors["train"], encoded["test"].codes,
                              draw.factors["test"], self.continuous, child_seed(rng))


def sap(dataset: ImageDataset, encode: Encode, rng: np.random.Generator | int = 0, *,
        num_train: int = SAP.num_train, num_test: int = SAP.num_test, continuous: bool = SAP.continuous,
        batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
    """SAP score (Kumar et al. 2018) of ``encode`` on ``dataset``: ``{"sap"}``."""
    return SAP(num_train=num_train, num_test=num_test, continuous=continuous).compute(dataset, encode, rng, batch_size)
