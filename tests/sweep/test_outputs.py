"""The sweep's outputs on hand-made trials: per-weight spreads of every metric, and the trade-off figure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from betavae.sweep.outputs import headline_metrics, plot_tradeoff, write_summary
from betavae.sweep.recommend import aggregate

MIG, FACTOR = "mig.mig", "factor_vae_score.eval_accuracy"


def trial(weight, seed, recon, metrics, state="COMPLETE", turn=None):
    return {"weight": weight, "seed": seed, "state": state, "reconstruction": recon, "kl": 10.0 / weight,
            "active_dims": 4, "kl_per_dim": [1.0, 0.0], "metrics": metrics, "turn_degrees": turn}


def study_trials():
    """β 1 and 4, three seeds each, with values whose means and standard deviations are known."""
    return [
        trial(1, 0, 30.0, {MIG: 0.1, FACTOR: 0.5, "udr": 0.2}, turn=30.0),
        trial(1, 1, 32.0, {MIG: 0.2, FACTOR: 0.6, "udr": 0.2}, turn=20.0),
        trial(1, 2, 34.0, {MIG: 0.3, FACTOR: 0.7, "udr": 0.2}, turn=10.0),
        trial(4, 0, 40.0, {MIG: 0.4, FACTOR: 0.8, "udr": 0.5}, turn=None),  # no pair of factors
        trial(4, 1, 44.0, {MIG: math.nan, FACTOR: 0.9, "udr": 0.5}),  # an undefined MIG is left out
        trial(4, 2, None, {}, state="FAIL", turn=40.0),  # a failed trial counts only as failed
    ]


def test_per_weight_spread_of_every_metric_value():
    rows = {r["weight"]: r for r in aggregate(study_trials(), MIG)}
    low, high = rows[1.0], rows[4.0]
    assert set(low["metrics"]) == {MIG, FACTOR, "udr"}
    assert low["metrics"][MIG] == pytest.approx({"mean": 0.2, "std": 0.1, "min": 0.1, "max": 0.3, "n": 3})
    assert low["metrics"][FACTOR] == pytest.approx({"mean": 0.6, "std": 0.1, "min": 0.5, "max": 0.7, "n": 3})
    assert low["reconstruction"] == pytest.approx({"mean": 32.0, "std": 2.0, "min": 30.0, "max": 34.0, "n": 3})
    # β = 4: two completed seeds, one of them without a finite MIG; the failed seed is in no mean
    assert (high["completed"], high["failed"], high["seeds"]) == (2, 1, [0, 1, 2])
    assert high["metrics"][MIG] == {"mean": 0.4, "std": 0.0, "min": 0.4, "max": 0.4, "n": 1}
    assert high["metrics"][FACTOR]["mean"] == pytest.approx(0.85)
    assert high["metrics"][FACTOR]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert high["reconstruction"]["mean"] == pytest.approx(42.0)
    # the turn's spread is over the seeds with a pair of factors; a failed trial's is in none
    assert low["turn_degrees"] == pytest.approx({"mean": 20.0, "std": 10.0, "min": 10.0, "max": 30.0, "n": 3})
    assert high["turn_degrees"]["n"] == 0 and math.isnan(high["turn_degrees"]["mean"])
    # the ranking metric keeps its own key, as before
    assert low["metric"] == low["metrics"][MIG] and high["metric"] == high["metrics"][MIG]


def test_summary_json_carries_every_metric_per_weight(tmp_path):
    write_summary(tmp_path, study_trials(), FACTOR)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metric"] == FACTOR and len(summary["trials"]) == 6
    low, high = summary["per_weight"]
    for key in ("weight", "seeds", "completed", "failed", "reconstruction", "kl", "active_dims", "turn_degrees", "metric",
                "metrics"):
        assert key in low
    assert low["metric"]["mean"] == pytest.approx(0.6)  # the ranking metric is FactorVAE here
    assert low["metrics"][MIG]["mean"] == pytest.approx(0.2) and low["metrics"]["udr"]["n"] == 3
    assert high["metrics"][MIG]["n"] == 1
    assert next(t for t in summary["trials"] if t["seed"] == 1 and t["weight"] == 4)["metrics"][MIG] is None
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert {MIG, FACTOR, "udr"} <= set(header)


def test_headline_metrics_put_the_ranking_metric_first_and_keep_only_those_measured():
    trials = study_trials()
    assert headline_metrics(trials, MIG) == [MIG, FACTOR]
    assert headline_metrics(trials, "udr") == ["udr", MIG, FACTOR]
    assert headline_metrics(trials, FACTOR) == [FACTOR, MIG]
    only_mig = [dict(t, metrics={MIG: t["metrics"].get(MIG)}) for t in trials]
    assert headline_metrics(only_mig, MIG) == [MIG]


def _crimson_pixels(path) -> int:
    """Pixels of the colour that marks the recommended weight (matplotlib's crimson, 220, 20, 60)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(pixels - [220, 20, 60]).sum(axis=-1) < 40).sum())


def test_tradeoff_figure_has_a_panel_column_per_headline_metric_and_marks_the_recommendation(tmp_path):
    both = tmp_path / "both.png"
    plot_tradeoff(both, study_trials(), MIG, "β", recommended=1.0)
    assert both.stat().st_size > 20_000
    one = tmp_path / "one.png"
    only_mig = [dict(t, metrics={MIG: t["metrics"].get(MIG)}) for t in study_trials()]
    plot_tradeoff(one, only_mig, MIG, "β", recommended=1.0)
    with Image.open(both) as wide, Image.open(one) as narrow:
        # MIG and FactorVAE panels plus the legend / reconstruction column, against MIG's and that column
        assert wide.height == narrow.height and wide.width == pytest.approx(narrow.width * 3 / 2, abs=2)
    assert _crimson_pixels(both) > 200  # the ring, its label and the dashed line at the recommended β
    unmarked = tmp_path / "unmarked.png"
    plot_tradeoff(unmarked, study_trials(), MIG, "β", recommended=None)
    assert _crimson_pixels(unmarked) == 0


def with_readback(trials):
    """``trials`` whose completed ones also carry the share of reconstructions that show shape and x."""
    shown = {(1, 0): (0.9, 1.0), (1, 1): (0.8, 1.0), (1, 2): (0.7, 0.9), (4, 0): (0.4, 1.0), (4, 1): (0.3, 0.95)}
    out = []
    for t in trials:
        if t["state"] == "COMPLETE":
            shape, x = shown[(t["weight"], t["seed"])]
            t = dict(t, metrics={**t["metrics"], "reconstructed_factors.shape": shape, "reconstructed_factors.x": x},
                     readback_floor={"shape": 1 / 3, "x": 0.05})
        out.append(t)
    return out


def test_the_share_of_reconstructions_showing_each_factor_is_summarised_and_drawn_against_the_weight(tmp_path):
    from betavae.sweep.outputs import metric_label, readback_factors

    trials = with_readback(study_trials())
    assert readback_factors(trials) == ["shape", "x"] and readback_factors(study_trials()) == []
    assert metric_label("reconstructed_factors.shape") == "shape shown" and metric_label(MIG) == "MIG"
    assert headline_metrics(trials, MIG) == [MIG, FACTOR]  # not a disentanglement measure: no panel of its own
    rows = {r["weight"]: r for r in aggregate(trials, MIG)}
    assert rows[1.0]["metrics"]["reconstructed_factors.shape"] == pytest.approx(
        {"mean": 0.8, "std": 0.1, "min": 0.7, "max": 0.9, "n": 3})
    assert rows[4.0]["metrics"]["reconstructed_factors.shape"]["mean"] == pytest.approx(0.35)

    plain, shown = tmp_path / "plain.png", tmp_path / "shown.png"
    plot_tradeoff(plain, study_trials(), MIG, "β", recommended=1.0)
    plot_tradeoff(shown, trials, MIG, "β", recommended=1.0)
    with Image.open(plain) as a, Image.open(shown) as b:
        # one more column: the readback panel at the bottom right
        assert b.height == a.height and b.width == pytest.approx(a.width * 4 / 3, abs=2)
        pixels = np.asarray(b.convert("RGB")).astype(int)
    panel = pixels[pixels.shape[0] // 2:, 3 * pixels.shape[1] // 4:]
    blue = (np.abs(panel - [31, 119, 180]).sum(axis=-1) < 30).sum()  # tab10's first colour: shape's line
    orange = (np.abs(panel - [255, 127, 14]).sum(axis=-1) < 30).sum()  # its second: x's line
    assert blue > 100 and orange > 100
