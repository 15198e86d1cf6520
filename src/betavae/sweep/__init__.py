"""Choosing the weight of an objective (β and the like): a grid of (weight, seed) trials on an Optuna
study, each trained and evaluated, then a trade-off plot and a recommendation. See docs/sweep.md."""

from betavae.sweep.recommend import aggregate, recommend
from betavae.sweep.runner import run_sweep, summarize
from betavae.sweep.spec import WEIGHT_FIELDS, SweepSpec, metric_key
from betavae.sweep.storage import check_storage_url, redact_url
from betavae.sweep.udr import similarity_matrix, udr_pair, udr_scores

__all__ = ["SweepSpec", "WEIGHT_FIELDS", "aggregate", "check_storage_url", "metric_key", "recommend", "redact_url", "run_sweep",
           "similarity_matrix", "summarize", "udr_pair", "udr_scores"]
