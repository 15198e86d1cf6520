"""The recommendation rule on hand-made results."""

from __future__ import annotations

import math

import pytest

from betavae.sweep.recommend import aggregate, recommend


def trial(weight, seed, recon, metric, state="COMPLETE"):
    return {"weight": weight, "seed": seed, "state": state, "reconstruction": recon, "kl": 1.0, "active_dims": 3,
            "metrics": {"mig.mig": metric}}


def test_best_metric_within_tolerance():
    trials = [trial(1, 0, 100, 0.1), trial(1, 1, 102, 0.2), trial(4, 0, 105, 0.4), trial(4, 1, 107, 0.3),
              trial(16, 0, 150, 0.9), trial(16, 1, 160, 0.8)]
    result = recommend(trials, "mig.mig", tolerance=0.1)
    assert result["weight"] == 4
    assert "16" in result["reason"] and "tolerance" in result["reason"]
    assert result["reconstruction_limit"] == pytest.approx(101 * 1.1)
    # a looser tolerance lets the higher-scoring weight in
    assert recommend(trials, "mig.mig", tolerance=0.6)["weight"] == 16


def test_ties_go_to_better_reconstruction_then_smaller_weight():
    tied = [trial(2, 0, 101, 0.5), trial(8, 0, 100, 0.5), trial(1, 0, 100.5, 0.1)]
    assert recommend(tied, "mig.mig")["weight"] == 8
    same = [trial(2, 0, 100, 0.5), trial(8, 0, 100, 0.5)]
    result = recommend(same, "mig.mig")
    assert result["weight"] == 2 and "Tied" in result["reason"]


def test_nan_metric_and_failed_trials_are_left_out():
    trials = [trial(1, 0, 100, 0.2), trial(1, 1, 100, math.nan), trial(4, 0, 101, 0.3),
              trial(4, 1, None, None, state="FAIL"), trial(8, 0, 100, math.nan)]
    rows = {r["weight"]: r for r in aggregate(trials, "mig.mig")}
    assert rows[1]["metric"]["n"] == 1 and rows[1]["metric"]["mean"] == 0.2
    assert rows[4]["failed"] == 1 and rows[4]["completed"] == 1
    assert rows[8]["metric"]["n"] == 0
    result = recommend(trials, "mig.mig")
    assert result["weight"] == 4 and "1 trial(s) failed" in result["reason"]


def test_no_recommendation_when_nothing_scored():
    result = recommend([trial(1, 0, 100, math.nan), trial(2, 0, None, None, state="FAIL")], "mig.mig")
    assert result["weight"] is None and "none can be recommended" in result["reason"]


def test_lower_is_better_metric():
    key = "unsupervised.gaussian_total_correlation"
    trials = [dict(trial(1, 0, 100, 0), metrics={key: 2.0}), dict(trial(2, 0, 100, 0), metrics={key: 0.5})]
    assert recommend(trials, key)["weight"] == 2
