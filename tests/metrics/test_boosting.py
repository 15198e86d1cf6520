"""betavae's gradient-boosted trees against scikit-learn's GradientBoostingClassifier, the oracle."""

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from betavae.metrics.boosting import fit_boosted_trees
from betavae.metrics.dci import dci_from_codes, importance_matrix


def _cases(n=600, seed=0):
    """(codes, factors) train/test pairs of several shapes: informative, entangled, tied, discrete."""
    rng = np.random.default_rng(seed)
    sizes = (2, 3, 7)  # a two-class factor takes the logistic path, the others the softmax
    factors = np.stack([rng.integers(0, s, 2 * n) for s in sizes], 1)
    signal = factors / np.array(sizes) + 0.15 * rng.standard_normal((2 * n, 3))
    noise = rng.standard_normal((2 * n, 2))
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    codes = {
        "noisy": np.concatenate([signal, noise], 1),
        "rotated": np.concatenate([signal @ rotation, noise], 1),
        "duplicated": np.concatenate([signal, signal], 1),  # exact ties between dimensions
        "discrete": factors + 5e-8 * rng.integers(0, 3, factors.shape),  # values closer than 1e-7
        "noise only": rng.standard_normal((2 * n, 4)),
        "rounded float32": np.round(signal, 2).astype(np.float32),  # many equal values
    }
    return {name: (c[:n], factors[:n], c[n:], factors[n:]) for name, c in codes.items()}


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_dci_matches_scikit_learn(name):
    train, factors_train, test, factors_test = CASES[name]
    ours = dci_from_codes(train, factors_train, test, factors_test, random_state=1)
    oracle = dci_from_codes(train, factors_train, test, factors_test, implementation="scikit-learn", random_state=1)
    assert ours.keys() == oracle.keys()
    for key in ours:
        assert ours[key] == pytest.approx(oracle[key], abs=0.01), key


@pytest.mark.parametrize("name", ["noisy", "rotated", "noise only", "rounded float32"])
def test_importances_and_accuracies_match_scikit_learn(name):
    train, factors_train, test, factors_test = CASES[name]
    ours, ours_train, ours_test = importance_matrix(train, factors_train, test, factors_test)
    oracle, oracle_train, oracle_test = importance_matrix(train, factors_train, test, factors_test, "scikit-learn")
    assert np.abs(ours - oracle).max() < 0.02
    assert np.abs(ours_train - oracle_train).max() < 0.02
    assert np.abs(ours_test - oracle_test).max() < 0.02
    assert np.allclose(ours.sum(axis=0), 1.0)


def test_tied_dimensions_share_importance_as_in_scikit_learn():
    train, factors_train, test, factors_test = CASES["duplicated"]
    ours = importance_matrix(train, factors_train, test, factors_test)[0]
    oracle = importance_matrix(train, factors_train, test, factors_test, "scikit-learn")[0]
    # each copy of a signal dimension gets part of its importance, neither copy all of it
    for j in range(3):
        assert 0.2 < ours[j, j] / (ours[j, j] + ours[j + 3, j]) < 0.8
        assert ours[j, j] + ours[j + 3, j] == pytest.approx(oracle[j, j] + oracle[j + 3, j], abs=0.02)


@pytest.mark.parametrize("classes", [2, 4])
def test_a_first_stage_is_scikit_learns_tree_exactly(classes):
    """Without ties, one stage grows the same trees: same splits, thresholds and leaf values."""
    rng = np.random.default_rng(classes)
    codes = rng.standard_normal((300, 4))
    labels = (codes[:, 1] + 0.5 * codes[:, 2] + 0.3 * rng.standard_normal(300) > 0).astype(int)
    if classes == 4:
        labels = labels * 2 + (codes[:, 3] > 0.2)
    ours = fit_boosted_trees(codes, labels[:, None], n_stages=1, max_depth=1)
    oracle = GradientBoostingClassifier(n_estimators=1, max_depth=1).fit(codes, labels)
    for column, tree in enumerate(oracle.estimators_[0]):
        tree = tree.tree_
        assert ours.features[0, column, 0] == tree.feature[0]
        assert ours.thresholds[0, column, 0] == tree.threshold[0]
        left, right = tree.children_left[0], tree.children_right[0]
        assert ours.leaf_values[0, column, 1:3] == pytest.approx([tree.value[left, 0, 0], tree.value[right, 0, 0]], rel=1e-12)
    expected = oracle.decision_function(codes)
    got = ours.raw_predictions(codes)
    got = got[0] if classes == 2 else got.T
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert np.array_equal(ours.predict(codes)[:, 0], oracle.predict(codes))


def test_separable_factors_are_predicted_exactly_and_constant_codes_get_no_importance():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    codes = np.stack([labels + 0.1 * rng.random(400), np.zeros(400)], 1)
    fit = fit_boosted_trees(codes, labels[:, None], n_stages=10)
    assert np.array_equal(fit.train_predictions[:, 0], labels)
    assert fit.importances[:, 0] == pytest.approx([1.0, 0.0])
    nothing = fit_boosted_trees(np.zeros((50, 3)), rng.integers(0, 3, (50, 1)), n_stages=5)
    assert np.array_equal(nothing.importances, np.zeros((3, 1)))  # no tree split: zeros, as scikit-learn


def test_a_single_class_factor_is_refused():
    with pytest.raises(ValueError, match="single class"):
        fit_boosted_trees(np.zeros((10, 2)), np.zeros((10, 1), int))
