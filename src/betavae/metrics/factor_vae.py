"""FactorVAE score (Kim & Mnih 2018, "Disentangling by Factorising", ICML 2018, the disentanglement metric it proposes), as in the
disentanglement_lib protocol.

Codes are first divided by their global standard deviation (dimensions with std < 0.05 are dropped
as collapsed). A vote: choose a factor k; draw ``group_size`` factor vectors that share factor k;
the dimension with the smallest variance relative to its global variance gets a vote for k. The
classifier maps each dimension to the factor with most training votes (a majority-vote classifier,
which needs no optimisation); the score is the fraction of held-out votes it classifies correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from betavae.data.base import ImageDataset
from betavae.errors import ConfigError, DataError
from betavae.metrics.base import (DEFAULT_BATCH_SIZE, Draw, Encode, Encoded, Metric, factor_indices,
                                  sample_factors, sample_factors_fixing)
from betavae.metrics.utils import check_codes


def _draw_votes(dataset: ImageDataset, rng: np.random.Generator, num_votes: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(P, B)`` of groups sharing one factor and that factor ``(P,)``."""
    labels = rng.integers(0, dataset.num_factors, size=num_votes)  # type: ignore[attr-defined]
    anchors = sample_factors(dataset, rng, (num_votes,))  # the fixed value: the first sample's
    values = np.repeat(anchors[np.arange(num_votes), labels][:, None], group_size, axis=1)  # (P, B)
    factors = sample_factors_fixing(dataset, rng, labels, values)
    return factor_indices(dataset, factors, rng), labels


def _votes(codes: np.ndarray, labels: np.ndarray, global_variances: np.ndarray, active: np.ndarray,
           num_factors: int, what: str) -> np.ndarray:
    """Vote matrix ``(K, active dims)``: ``votes[k, d]`` counts groups of factor k won by dim d."""
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise DataError(f"{what} must have shape (votes, group_size, D), got {codes.shape}.")
    if codes.shape[-1] != len(global_variances):
        raise DataError(f"{what} has {codes.shape[-1]} dims but global_codes has {len(global_variances)}; use one encoder.")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(codes):
        raise DataError(f"{what} has {len(codes)} groups but {len(labels)} labels; pass one label per group.")
    if np.any(labels < 0) or np.any(labels >= num_factors):
        raise DataError(f"labels must be factor numbers in [0, {num_factors}); got {labels.min()}..{labels.max()}.")
    check_codes(codes.reshape(-1, codes.shape[-1]), what)
    local = np.var(codes.astype(np.float64), axis=1, ddof=1)  # (P, D)
    winners = np.argmin(local[:, active] / global_variances[active], axis=1)
    votes = np.zeros((num_factors, int(active.sum())), dtype=np.int64)
    np.add.at(votes, (labels, winners), 1)
    return votes


def factor_vae_score_from_codes(global_codes: np.ndarray, codes_train: np.ndarray, labels_train: np.ndarray,
                                codes_eval: np.ndarray, labels_eval: np.ndarray, num_factors: int,
                                prune_threshold: float = 0.05) -> dict[str, float]:
    """FactorVAE score from codes of uniform samples ``(N, D)`` (global variances) and of vote
    groups ``(P, B, D)`` with their fixed factors ``(P,)``.

    Returns ``eval_accuracy`` (the score), ``train_accuracy`` and ``num_active_dims``.
    """
    global_codes = check_codes(global_codes, "global_codes")
    if len(global_codes) < 2:
        raise DataError("global_codes needs at least 2 rows to estimate variances; raise num_variance_estimate.")
    global_variances = np.var(global_codes, axis=0, ddof=1)
    active = np.sqrt(global_variances) >= prune_threshold
    if not active.any():  # every dimension collapsed: nothing can vote
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}
    train = _votes(codes_train, labels_train, global_variances, active, num_factors, "codes_train")
    evaluation = _votes(codes_eval, labels_eval, global_variances, active, num_factors, "codes_eval")
    classifier = np.argmax(train, axis=0)  # factor of each active dimension
    dims = np.arange(train.shape[1])
    return {
        "train_accuracy": float(train[classifier, dims].sum() / train.sum()),
        "eval_accuracy": float(evaluation[classifier, dims].sum() / evaluation.sum()),
        "num_active_dims": float(active.sum()),
    }


@dataclass(frozen=True)
class FactorVAEScore(Metric):
    """Protocol parameters: variances from 10,000 codes, 10,000 / 5,000 votes of 64 images each."""

    name: ClassVar[str] = "factor_vae_score"
    primary_value: ClassVar[str] = "eval_accuracy"
    group_size: int = 64
    num_train: int = 10_000
    num_eval: int = 5_000
    num_variance_estimate: int = 10_000
    prune_threshold: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2 or self.num_variance_estimate < 2:
            raise ConfigError("factor_vae_score: group_size and num_variance_estimate must be at least 2 (variances need two samples).")

    def draw(self, dataset: ImageDataset, rng: np.random.Generator) -> Draw:
        global_factors = sample_factors(dataset, rng, (self.num_variance_estimate,))
        train, train_labels = _draw_votes(dataset, rng, self.num_train, self.group_size)
        evaluation, eval_labels = _draw_votes(dataset, rng, self.num_eval, self.group_size)
        return Draw(
            indices={"global": factor_indices(dataset, global_factors, rng), "train": train, "eval": evaluation},
            labels={"train": train_labels, "eval": eval_labels},
            factor_sizes=tuple(dataset.factor_sizes),  # type: ignore[attr-defined]
        )

    def score(self, draw: Draw, encoded: dict[str, Encoded], rng: np.random.Generator) -> dict[str, float]:
        return factor_vae_score_from_codes(
            encoded["global"].codes, encoded["train"].codes, draw.labels["train"], encoded["eval"].codes,
            draw.labels["eval"], len(draw.factor_sizes), self.prune_threshold,
        )


def factor_vae_score(dataset: ImageDataset, encode: Encode, rng: np.random.Generator | int = 0, *,
                     group_size: int = FactorVAEScore.group_size, num_train: int = FactorVAEScore.num_train,
                     num_eval: int = FactorVAEScore.num_eval,
                     num_variance_estimate: int = FactorVAEScore.num_variance_estimate,
                     prune_threshold: float = FactorVAEScore.prune_threshold,
                     batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
    """FactorVAE score (Kim & Mnih 2018) of ``encode`` on ``dataset``.

    Returns ``eval_accuracy`` (the score, in [0, 1]), ``train_accuracy`` and ``num_active_dims``.
    """
    metric = FactorVAEScore(group_size=group_size, num_train=num_train, num_eval=num_eval,
                            num_variance_estimate=num_variance_estimate, prune_threshold=prune_threshold)
    return metric.compute(dataset, encode, rng, batch_size)
