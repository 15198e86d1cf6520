"""UDR (Duan et al. 2020) on synthetic codes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from betavae.errors import ConfigError
from betavae.sweep.udr import similarity_matrix, udr_pair, udr_scores


def _factors(n: int = 500, k: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, k))


@pytest.mark.parametrize("correlation", ["spearman", "lasso"])
def test_identical_and_permuted_models_agree(correlation):
    z = _factors()
    flipped = -z[:, [2, 0, 3, 1]] * np.array([1.0, 2.0, 0.5, 3.0])  # permuted, rescaled, sign-flipped
    kl = [np.ones(4), np.ones(4)]
    scores, pairwise = udr_scores([z, flipped], kl, correlation)
    # not exactly 1: chance correlations ~1/sqrt(N) of unmatched latents (Spearman) or the Lasso's
    # shrinkage of every weight by alpha = 0.1 enter the denominators of (S1)
    assert np.all(scores > 0.85) and scores[0] == pytest.approx(scores[1])
    assert np.isnan(pairwise[0, 0]) and pairwise[0, 1] > 0.85


def test_unrelated_models_score_low():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(500, 4)), rng.normal(size=(500, 4))
    score = udr_pair(similarity_matrix(a, b), np.ones(4, bool), np.ones(4, bool))
    # |ρ| of independent columns ~ 1/sqrt(N): each latent spreads over all four of the other model
    assert score < 0.5


def test_entangled_model_scores_between():
    z = _factors()
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))[0]
    score = udr_pair(similarity_matrix(z, z @ rotation), np.ones(4, bool), np.ones(4, bool))
    assert 0.3 < score < 0.95


def test_uninformative_latents_are_left_out():
    z = _factors(k=2)
    rng = np.random.default_rng(3)
    a = np.concatenate([z, rng.normal(size=(500, 2))], axis=1)  # two noise latents
    b = np.concatenate([z[:, ::-1], rng.normal(size=(500, 2))], axis=1)
    informative = np.array([True, True, False, False])
    assert udr_pair(similarity_matrix(a, b), informative, informative) > 0.9
    assert udr_pair(similarity_matrix(a, b), np.ones(4, bool), np.ones(4, bool)) < 0.9
    assert udr_pair(similarity_matrix(a, b), np.zeros(4, bool), informative) == 0.0


def test_hand_computed_pair():
    r = np.array([[0.8, 0.2], [0.0, 0.5]])
    # b: 0.8²/0.8 + 0.5²/0.7; a: 0.8²/1.0 + 0.5²/0.5; over d_a + d_b = 4
    expected = (0.8 + 0.25 / 0.7 + 0.64 + 0.5) / 4
    assert udr_pair(r, np.ones(2, bool), np.ones(2, bool)) == pytest.approx(expected)


def test_median_over_seeds_and_bad_input():
    z = _factors()
    noise = np.random.default_rng(4).normal(size=z.shape)
    scores, _ = udr_scores([z, z, noise], [np.ones(4)] * 3)
    assert scores[0] == pytest.approx(scores[1]) and scores[2] < scores[0]
    with pytest.raises(ConfigError):
        udr_scores([z], [np.ones(4)])
    with pytest.raises(ConfigError):
        similarity_matrix(z, z, "pearson")
