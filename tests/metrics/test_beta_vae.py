import numpy as np
import pytest
from tests.metrics.conftest import FactorGrid, constant, identity

from betavae.errors import DataError
from betavae.metrics import beta_vae_score, beta_vae_score_from_codes

SMALL = dict(num_train=300, num_eval=200, group_size=16)


def test_identity_scores_one_on_dsprites_sizes():
    result = beta_vae_score(FactorGrid(), identity, 0, **SMALL)
    assert result == {"train_accuracy": 1.0, "eval_accuracy": 1.0}


def test_constant_scores_about_chance():
    result = beta_vae_score(FactorGrid(), constant, 0, **SMALL)
    assert result["eval_accuracy"] < 0.35  # five factors: chance is 0.2


def test_rotated_codes_score_lower():
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))[0]
    result = beta_vae_score(FactorGrid(), lambda x: identity(x) @ rotation, 0, **SMALL)
    assert result["eval_accuracy"] < 0.9


def test_drawn_pairs_share_exactly_the_labelled_factor():
    from betavae.metrics.beta_vae import BetaVAEScore

    grid = FactorGrid((3, 4, 5))
    draw = BetaVAEScore(num_train=50, num_eval=10, group_size=8).draw(grid, np.random.default_rng(0))
    factors = grid.index_to_factors(draw.indices["train"].reshape(-1)).reshape(50, 2, 8, 3)
    same = factors[:, 0] == factors[:, 1]  # (P, B, K)
    labels = draw.labels["train"]
    assert np.all(same[np.arange(50), :, labels])


def test_hand_built_features():
    # one dimension per factor; the fixed factor's dimension has zero difference
    rng = np.random.default_rng(0)
    def codes(labels):
        pairs = rng.random((len(labels), 2, 4, 3))
        pairs[np.arange(len(labels)), 1, :, labels] = pairs[np.arange(len(labels)), 0, :, labels]
        return pairs
    labels = np.arange(60) % 3
    assert beta_vae_score_from_codes(codes(labels), labels, codes(labels), labels)["eval_accuracy"] == 1.0
    with pytest.raises(DataError, match="points, 2, group_size, D"):
        beta_vae_score_from_codes(np.zeros((6, 4, 3)), labels[:6], np.zeros((6, 4, 3)), labels[:6])
    with pytest.raises(DataError, match="different lengths"):
        beta_vae_score_from_codes(codes(labels), labels[:5], codes(labels), labels)
