import numpy as np
import pytest
from tests.metrics.conftest import FactorGrid, constant, identity

from betavae.errors import ConfigError
from betavae.metrics import factor_vae_score, factor_vae_score_from_codes

SMALL = dict(num_train=300, num_eval=200, num_variance_estimate=1_000, group_size=16)


def test_identity_scores_one():
    result = factor_vae_score(FactorGrid(), identity, 0, **SMALL)
    assert result == {"train_accuracy": 1.0, "eval_accuracy": 1.0, "num_active_dims": 5.0}


def test_constant_has_no_active_dimension_and_scores_zero():
    result = factor_vae_score(FactorGrid(), constant, 0, **SMALL)
    assert result == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}


def test_duplicated_codes_lose_a_factor():
    # each factor has two identical dims, the argmin always picks the first; a dim merging two
    # factors (code = f0 + f1) makes their votes collide
    merged = lambda x: np.stack([identity(x)[:, 0] + identity(x)[:, 1], *identity(x)[:, 2:].T], axis=1)
    result = factor_vae_score(FactorGrid(), merged, 0, **SMALL)
    assert 0.5 < result["eval_accuracy"] < 0.9


def test_majority_vote_by_hand():
    # two factors, two dims; global variance 1 each. Train: factor 0 groups are constant in dim 0
    # (3 groups), factor 1 groups constant in dim 1 (2 groups) -> classifier dim0->0, dim1->1.
    # Eval: one factor-0 group constant in dim 1 (misclassified), one factor-1 group constant in dim 1.
    global_codes = np.array([[0.0, 0.0], [2.0, 2.0]]) / np.sqrt(2.0)
    fixed0 = np.array([[0.0, -1.0], [0.0, 1.0]])
    fixed1 = np.array([[-1.0, 0.0], [1.0, 0.0]])
    train = np.stack([fixed0, fixed0, fixed0, fixed1, fixed1])
    evaluation = np.stack([fixed1, fixed1])
    result = factor_vae_score_from_codes(global_codes, train, [0, 0, 0, 1, 1], evaluation, [0, 1], num_factors=2)
    assert result == {"train_accuracy": 1.0, "eval_accuracy": 0.5, "num_active_dims": 2.0}


def test_group_size_below_two_is_rejected():
    with pytest.raises(ConfigError, match="at least 2"):
        factor_vae_score(FactorGrid(), identity, 0, group_size=1)
