"""Unsupervised Disentanglement Ranking (UDR; Duan et al. 2020, "Unsupervised Model Selection for
Variational Disentangled Representation Learning", ICLR 2020, Section 3).

Idea: models trained with the same hyperparameters but different seeds agree with each other (up to
permutation and sign of their latents) when they are disentangled, and disagree when entangled.
For two models a and b with codes of the same images:

* ``R`` (D_a × D_b): similarity of latent i of a and latent j of b, either ``|Spearman ρ|`` of the
  two columns, or ``|w_ij|`` of a Lasso regression of b's standardised codes on a's.
* Informative latents: mean KL(q(z_i|x) ‖ p(z_i)) above a threshold (0.01 nats in the paper);
  ``I_KL(i)`` is 1 for those, 0 otherwise, and d_a, d_b count them.
* With ``r_a = max_j R_ij`` (best match of a's latent i) and ``r_b = max_i R_ij``:

      UDR_ab = 1/(d_a + d_b) [ Σ_j r_b(j)² I_KL(j) / Σ_i R_ij I_KL(i)
                             + Σ_i r_a(i)² I_KL(i) / Σ_j R_ij I_KL(j) ]            (S1)

  Each term is 1 for a latent that matches exactly one latent of the other model and falls towards
  1/k when it spreads over k of them.
* A model's score is the median of UDR_ab over the other models b of its hyperparameter setting
  (Section 3, "UDR aggregation").                                                     (S2)

docs/sweep.md gives the same definition with a worked reading.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import Lasso

from betavae.errors import ConfigError

CORRELATIONS = ("spearman", "lasso")
#: Mean KL (nats) below which a latent counts as uninformative (Duan et al. 2020 use 0.01).
KL_THRESHOLD = 0.01


def _standardise(codes: np.ndarray) -> np.ndarray:
    std = codes.std(axis=0)
    return (codes - codes.mean(axis=0)) / np.where(std > 0, std, 1.0)


def similarity_matrix(codes_a: np.ndarray, codes_b: np.ndarray, correlation: str = "spearman",
                      lasso_alpha: float = 0.1) -> np.ndarray:
    """``R`` (D_a, D_b): |Spearman ρ| between latents, or |Lasso weights| of b on a (S1)."""
    if correlation not in CORRELATIONS:
        raise ConfigError(f"unknown UDR correlation '{correlation}'; choose one of: {', '.join(CORRELATIONS)}.")
    codes_a, codes_b = np.asarray(codes_a, np.float64), np.asarray(codes_b, np.float64)
    if codes_a.ndim != 2 or codes_b.ndim != 2 or len(codes_a) != len(codes_b) or len(codes_a) < 3:
        raise ConfigError(f"UDR needs codes (N, D) of the same N >= 3 images from both models, got "
                          f"{codes_a.shape} and {codes_b.shape}.")
    if correlation == "spearman":
        ranks_a = _standardise(rankdata(codes_a, axis=0))  # (N, D_a)
        ranks_b = _standardise(rankdata(codes_b, axis=0))  # (N, D_b)
        return np.abs(ranks_a.T @ ranks_b / len(codes_a))
    lasso = Lasso(alpha=lasso_alpha, random_state=0).fit(_standardise(codes_a), _standardise(codes_b))
    return np.abs(np.atleast_2d(lasso.coef_)).T  # coef_ is (D_b, D_a)


def udr_pair(similarity: np.ndarray, informative_a: np.ndarray, informative_b: np.ndarray) -> float:
    """UDR_ab of Eq. (S1) from ``R`` and the informative-latent masks of both models.

    0 when either model has no informative latent (nothing to agree on).
    """
    r = np.asarray(similarity, np.float64)[np.ix_(informative_a, informative_b)]  # (d_a, d_b)
    d_a, d_b = r.shape
    if d_a == 0 or d_b == 0:
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        per_b = np.nan_to_num(r.max(axis=0) ** 2 / r.sum(axis=0))  # (d_b,) a latent of b correlated with none scores 0
        per_a = np.nan_to_num(r.max(axis=1) ** 2 / r.sum(axis=1))  # (d_a,)
    return float((per_b.sum() + per_a.sum()) / (d_a + d_b))


def udr_scores(codes: list[np.ndarray], kl_per_dim: list[np.ndarray], correlation: str = "spearman",
               kl_threshold: float = KL_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """UDR of each of M models of one hyperparameter setting (Eq. S2).

    ``codes[m]``: mean codes (N, D_m) of the same N images; ``kl_per_dim[m]``: mean KL per latent.
    Returns (scores (M,), pairwise UDR_ab (M, M) with NaN on the diagonal). Needs M >= 2.
    """
    if len(codes) != len(kl_per_dim):
        raise ConfigError(f"UDR got codes of {len(codes)} models but KL of {len(kl_per_dim)}.")
    if len(codes) < 2:
        raise ConfigError("UDR compares models across seeds and needs at least 2 of the same setting; use --seeds 2 or more.")
    masks = [np.asarray(kl, np.float64) > kl_threshold for kl in kl_per_dim]
    pairwise = np.full((len(codes), len(codes)), np.nan)
    for a in range(len(codes)):
        for b in range(len(codes)):
            if a != b:
                pairwise[a, b] = udr_pair(similarity_matrix(codes[a], codes[b], correlation), masks[a], masks[b])
    scores = np.array([np.median(np.delete(pairwise[m], m)) for m in range(len(codes))])
    return scores, pairwise
