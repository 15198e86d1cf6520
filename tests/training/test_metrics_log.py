"""Runs written before a log key was renamed read under the new name."""

import json

from betavae.training.logging import read_metrics
from betavae.training.rundir import METRICS_FILE, REFERENCE_ROOT


def test_old_weighted_kl_reads_as_weighted_regulariser(tmp_path):
    old = {"step": 100, "reconstruction": 30.0, "kl": 5.0, "weighted_kl": 20.0, "loss": 50.0, "kl_per_dim": [5.0]}
    new = {"step": 200, "reconstruction": 28.0, "kl": 6.0, "weighted_regulariser": 24.0, "loss": 52.0,
           "kl_per_dim": [6.0]}
    (tmp_path / METRICS_FILE).write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n")  # a resumed old run
    history = read_metrics(tmp_path)
    assert [r["weighted_regulariser"] for r in history] == [20.0, 24.0]
    assert all("weighted_kl" not in r for r in history)
    assert list(history[0]) == ["step", "reconstruction", "kl", "weighted_regulariser", "loss", "kl_per_dim"]  # order kept


def test_shipped_reference_models_read_under_the_new_name():
    for run in sorted(p.parent for p in REFERENCE_ROOT.glob(f"*/{METRICS_FILE}")):
        history = read_metrics(run)
        assert history and all("weighted_regulariser" in r for r in history), run
