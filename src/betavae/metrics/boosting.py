"""Gradient-boosted trees for DCI: scikit-learn's ``GradientBoostingClassifier`` model, fitted fast.

The disentanglement_lib protocol scores DCI with one ``GradientBoostingClassifier`` per factor at
scikit-learn's defaults: log-loss, 100 stages, learning rate 0.1, regression trees of depth 3 grown
with exact (not histogram) splits, one tree per class and stage (one per stage for two classes).
This module fits that same model (Friedman 2001, "Greedy Function Approximation", Algorithm 6 with
scikit-learn's choices below) without its cost. On dSprites (3 + 6 + 40 + 32 + 32 classes, 10,000
codes of 10 dims) scikit-learn grows 11,300 trees, sorting each node's samples anew for each tree,
and takes about 7 minutes on 2 CPU cores; here the same trees take seconds because

* the codes never change across stages or classes, so each code dimension is sorted once and every
  node's best split is found by one pass over that order (a sample outside the node is skipped);
* all trees of a stage are independent given the stage's gradient, so the trees of every class of
  every factor grow in parallel, compiled with numba.

What is kept from scikit-learn, so that the fitted trees are the same:

* the initial raw prediction is the log of the class prior (clipped to [eps, 1 - eps]), centred
  over classes for several classes (the symmetric multinomial link) and the log-odds for two;
* each stage's trees fit the negative gradient ``y_k - p_k`` of the softmax (or logistic) loss,
  computed once per stage;
* a node is split when it holds at least 2 samples and its impurity (the variance of the gradient)
  exceeds float64 epsilon; the split is the one of largest ``S_l² / n_l + S_r² / n_r`` (squared
  error criterion), over every dimension and every position between two consecutive in-node values
  more than 1e-7 apart (scikit-learn's ``FEATURE_THRESHOLD``), the first found winning ties; the
  threshold is the midpoint of the two values (the lower one where the midpoint rounds up to the
  upper); codes are compared as float32, as scikit-learn converts them;
* a leaf's value is one Newton step: ``mean(y - p) / mean(p (1 - p))``, times ``(K - 1) / K`` for
  K > 2 classes, 0 where the denominator is below 1e-150;
* feature importances: each tree's impurity decrease per dimension over its nodes, divided by the
  number of samples, averaged over the trees whose root was split, normalised to sum 1.

Like scikit-learn, each node visits the dimensions in a random order and keeps the first best split,
so of two dimensions whose best splits tie exactly (two identical codes, say) either may win, each
as often; the random order comes from ``random_state`` through numpy, not from scikit-learn's own
generator, so a tie is not broken the same way as a given scikit-learn fit. Otherwise the two
differ by float rounding (sums are added in another order), which can turn a near tie the other
way. Tests compare importances, accuracies and DCI with scikit-learn on several shapes of codes and
factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numba import njit, prange

#: scikit-learn's ``FEATURE_THRESHOLD``: consecutive values closer than this are not split between.
FEATURE_THRESHOLD = 1e-7
#: scikit-learn's ``EPSILON`` for a pure node (float64 machine epsilon).
EPSILON = float(np.finfo(np.float64).eps)
#: scikit-learn's ``_safe_divide`` treats a smaller Newton denominator as zero.
TINY_DENOMINATOR = 1e-150

#: The protocol's settings (scikit-learn's defaults).
N_STAGES = 100
LEARNING_RATE = 0.1
MAX_DEPTH = 3


@njit(parallel=True, cache=True, nogil=True)
def _grow_stage(order, values, codes, gradient, hessian_scale, max_depth, learning_rate, rank,
                features, thresholds, is_split, leaf_values, importances, raw, targets):
    """Grow one regression tree per column of ``gradient`` ``(C, n)`` and add it to ``raw``.

    ``order`` ``(D, n)``: samples sorted by each code dimension; ``values`` ``(D, n)``: the sorted
    codes (float32 values as float64); ``codes`` ``(n, D)`` float32. Trees are stored in heap
    order (node h has children 2h + 1 and 2h + 2): ``features``, ``thresholds``, ``is_split``
    ``(C, 2^depth - 1)`` for the inner positions, ``leaf_values`` ``(C, 2^(depth+1) - 1)``.
    ``importances`` ``(C, D)`` receives each tree's impurity decrease per dimension over ``n``;
    ``targets`` ``(C, n)`` holds the 0/1 class indicators, for the Newton step's ``p = y - g``.
    ``rank`` ``(C, 2^depth - 1, D)``: each node's random order of visiting the dimensions; of splits
    with equal criterion, the one in the dimension visited first wins (then the lowest threshold).
    """
    num_columns, n = gradient.shape
    num_dims = order.shape[0]
    num_nodes = 2 ** (max_depth + 1) - 1
    for c in prange(num_columns):
        g = gradient[c]
        node = np.zeros(n, np.int64)  # heap index of each sample's node
        for depth in range(max_depth):
            first = 2 ** depth - 1
            width = 2 ** depth
            count = np.zeros(width)
            total = np.zeros(width)
            square = np.zeros(width)
            for s in range(n):
                j = node[s] - first
                if j >= 0:
                    count[j] += 1.0
                    total[j] += g[s]
                    square[j] += g[s] * g[s]
            splittable = np.zeros(width, np.bool_)
            any_splittable = False
            for j in range(width):
                if count[j] >= 2.0:
                    mean = total[j] / count[j]
                    if square[j] / count[j] - mean * mean > EPSILON:
                        splittable[j] = True
                        any_splittable = True
            if not any_splittable:
                break
            best = np.full(width, -np.inf)
            best_feature = np.zeros(width, np.int64)
            best_threshold = np.zeros(width)
            left_count = np.zeros(width)
            left_total = np.zeros(width)
            last = np.zeros(width)
            for f in range(num_dims):
                left_count[:] = 0.0
                left_total[:] = 0.0
                for r in range(n):
                    s = order[f, r]
                    j = node[s] - first
                    if j < 0 or not splittable[j]:
                        continue
                    x = values[f, r]
                    if left_count[j] > 0.0 and x > last[j] + FEATURE_THRESHOLD:
                        right_total = total[j] - left_total[j]
                        proxy = (left_total[j] * left_total[j] / left_count[j]
                                 + right_total * right_total / (count[j] - left_count[j]))
                        h = first + j
                        if proxy > best[j] or (proxy == best[j] and rank[c, h, f] < rank[c, h, best_feature[j]]):
                            best[j] = proxy
                            best_feature[j] = f
                            threshold = last[j] / 2.0 + x / 2.0
                            if threshold == x:
                                threshold = last[j]
                            best_threshold[j] = threshold
                    left_count[j] += 1.0
                    left_total[j] += g[s]
                    last[j] = x
            for j in range(width):
                if splittable[j] and best[j] > -np.inf:
                    h = first + j
                    is_split[c, h] = True
                    features[c, h] = best_feature[j]
                    thresholds[c, h] = best_threshold[j]
                    importances[c, best_feature[j]] += (best[j] - total[j] * total[j] / count[j]) / n
            for s in range(n):
                h = node[s]
                if h >= first and is_split[c, h]:
                    if codes[s, features[c, h]] <= thresholds[c, h]:
                        node[s] = 2 * h + 1
                    else:
                        node[s] = 2 * h + 2
        numerator = np.zeros(num_nodes)
        denominator = np.zeros(num_nodes)
        members = np.zeros(num_nodes)
        y = targets[c]
        for s in range(n):
            h = node[s]
            p = y[s] - g[s]
            numerator[h] += g[s]
            denominator[h] += p * (1.0 - p)
            members[h] += 1.0
        for h in range(num_nodes):
            if members[h] > 0.0:
                mean_denominator = denominator[h] / members[h]
                if abs(mean_denominator) < TINY_DENOMINATOR:
                    leaf_values[c, h] = 0.0
                else:
                    leaf_values[c, h] = numerator[h] / members[h] * hessian_scale[c] / mean_denominator
        for s in range(n):
            raw[c, s] += learning_rate * leaf_values[c, node[s]]


@njit(parallel=True, cache=True, nogil=True)
def _predict(codes, features, thresholds, is_split, leaf_values, learning_rate, raw):
    """Add every stage's trees to ``raw`` ``(C, m)`` for ``codes`` ``(m, D)`` float32."""
    num_stages, num_columns = features.shape[0], features.shape[1]
    m = codes.shape[0]
    for c in prange(num_columns):
        for i in range(m):
            total = raw[c, i]
            for t in range(num_stages):
                h = 0
                while h < is_split.shape[2] and is_split[t, c, h]:
                    if codes[i, features[t, c, h]] <= thresholds[t, c, h]:
                        h = 2 * h + 1
                    else:
                        h = 2 * h + 2
                total += learning_rate * leaf_values[t, c, h]
            raw[c, i] = total


@dataclass
class _Factor:
    """One factor's place among the stacked columns: classes, columns ``[start, start + width)``."""

    classes: np.ndarray
    start: int
    width: int  # 1 for two classes (one logistic tree per stage), else the number of classes


@dataclass
class BoostedTrees:
    """Gradient-boosted trees fitted for several factors at once (see :func:`fit_boosted_trees`)."""

    factors: list[_Factor]
    init: np.ndarray  # (C,) initial raw prediction of each column
    features: np.ndarray  # (stages, C, inner) int64
    thresholds: np.ndarray  # (stages, C, inner) float64
    is_split: np.ndarray  # (stages, C, inner) bool
    leaf_values: np.ndarray  # (stages, C, nodes) float64
    learning_rate: float
    #: ``(D, K)`` feature importances per factor, each column summing to 1 (or all 0 when no tree of
    #: that factor split), as scikit-learn's ``feature_importances_``.
    importances: np.ndarray
    #: ``(n, K)`` class predictions for the training codes.
    train_predictions: np.ndarray

    def raw_predictions(self, codes: np.ndarray) -> np.ndarray:
        """Raw scores ``(C, m)`` of every column for ``codes`` ``(m, D)``."""
        codes = np.ascontiguousarray(codes, dtype=np.float32)
        raw = np.repeat(self.init[:, None], len(codes), axis=1)
        _predict(codes, self.features, self.thresholds, self.is_split, self.leaf_values, self.learning_rate, raw)
        return raw

    def predict(self, codes: np.ndarray) -> np.ndarray:
        """Class predictions ``(m, K)`` for ``codes`` ``(m, D)``."""
        return _classes(self.factors, self.raw_predictions(codes))


def _classes(factors: list[_Factor], raw: np.ndarray) -> np.ndarray:
    predictions = np.zeros((raw.shape[1], len(factors)), np.int64)
    for j, factor in enumerate(factors):
        block = raw[factor.start : factor.start + factor.width]
        encoded = (block[0] >= 0).astype(np.int64) if factor.width == 1 else np.argmax(block, axis=0)
        predictions[:, j] = factor.classes[encoded]
    return predictions


def _negative_gradient(factors: list[_Factor], raw: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``y - p`` ``(C, n)``: softmax over each factor's columns, the logistic for two classes."""
    gradient = np.empty_like(raw)
    for factor in factors:
        block = raw[factor.start : factor.start + factor.width]
        if factor.width == 1:
            probability = 1.0 / (1.0 + np.exp(-block))
        else:
            shifted = np.exp(block - block.max(axis=0, keepdims=True))
            probability = shifted / shifted.sum(axis=0, keepdims=True)
        gradient[factor.start : factor.start + factor.width] = targets[factor.start : factor.start + factor.width] - probability
    return gradient


def fit_boosted_trees(codes: np.ndarray, factors: np.ndarray, n_stages: int = N_STAGES,
                      learning_rate: float = LEARNING_RATE, max_depth: int = MAX_DEPTH,
                      random_state: int | np.random.Generator = 0) -> BoostedTrees:
    """Fit one gradient-boosted classifier per column of ``factors`` ``(n, K)`` on ``codes`` ``(n, D)``.

    Each is the model scikit-learn's ``GradientBoostingClassifier(n_estimators=n_stages,
    learning_rate=learning_rate, max_depth=max_depth)`` fits (see the module docstring). Every factor
    needs at least two classes. ``random_state`` draws each node's order of visiting the dimensions
    (which of two exactly tied splits wins).
    """
    rng = np.random.default_rng(random_state)
    codes32 = np.ascontiguousarray(codes, dtype=np.float32)
    factors = np.asarray(factors)
    n, num_dims = codes32.shape
    fitted: list[_Factor] = []
    init_parts, target_parts, scale_parts = [], [], []
    start = 0
    for j in range(factors.shape[1]):
        classes, encoded = np.unique(factors[:, j], return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"factor {j} has a single class; gradient boosting needs at least two.")
        prior = np.clip(np.bincount(encoded, minlength=len(classes)) / n, EPSILON, 1 - EPSILON)
        if len(classes) == 2:
            init_parts.append(np.log(prior[1:] / (1 - prior[1:])))
            target_parts.append((encoded == 1)[None].astype(np.float64))
            scale_parts.append(np.ones(1))
        else:
            log_prior = np.log(prior)
            init_parts.append(log_prior - log_prior.mean())
            target_parts.append((encoded[None, :] == np.arange(len(classes))[:, None]).astype(np.float64))
            scale_parts.append(np.full(len(classes), (len(classes) - 1) / len(classes)))
        width = 1 if len(classes) == 2 else len(classes)
        fitted.append(_Factor(classes, start, width))
        start += width
    num_columns = start
    init = np.concatenate(init_parts)
    targets = np.ascontiguousarray(np.concatenate(target_parts))
    hessian_scale = np.concatenate(scale_parts)

    order = np.ascontiguousarray(np.argsort(codes32, axis=0, kind="stable").T)  # (D, n)
    values = np.ascontiguousarray(np.take_along_axis(codes32, order.T, axis=0).T.astype(np.float64))
    inner, nodes = 2 ** max_depth - 1, 2 ** (max_depth + 1) - 1
    features = np.zeros((n_stages, num_columns, inner), np.int64)
    thresholds = np.zeros((n_stages, num_columns, inner))
    is_split = np.zeros((n_stages, num_columns, inner), np.bool_)
    leaf_values = np.zeros((n_stages, num_columns, nodes))
    importances = np.zeros((n_stages, num_columns, num_dims))
    raw = np.ascontiguousarray(np.repeat(init[:, None], n, axis=1))
    for t in range(n_stages):
        gradient = np.ascontiguousarray(_negative_gradient(fitted, raw, targets))
        rank = np.argsort(rng.random((num_columns, inner, num_dims)), axis=-1).argsort(axis=-1)
        _grow_stage(order, values, codes32, gradient, hessian_scale, max_depth, learning_rate, rank,
                    features[t], thresholds[t], is_split[t], leaf_values[t], importances[t], raw, targets)

    matrix = np.zeros((num_dims, len(fitted)))
    for j, factor in enumerate(fitted):
        columns = slice(factor.start, factor.start + factor.width)
        relevant = is_split[:, columns, 0].reshape(-1)
        if relevant.any():
            mean = importances[:, columns].reshape(-1, num_dims)[relevant].mean(axis=0)
            matrix[:, j] = mean / mean.sum() if mean.sum() > 0 else mean
    return BoostedTrees(fitted, init, features, thresholds, is_split, leaf_values, learning_rate, matrix,
                        _classes(fitted, raw))
