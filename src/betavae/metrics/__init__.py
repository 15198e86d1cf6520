"""Disentanglement metrics, each in two layers: a sampling function ``metric(dataset, encode, rng)``
and an array function ``metric_from_codes(...)``; ``evaluate`` runs them all on shared codes.

See docs/metrics.md for definitions, protocol parameters and reproducibility notes.
"""

from betavae.metrics.base import DEFAULT_BATCH_SIZE, Draw, Encoded, Metric
from betavae.metrics.beta_vae import BetaVAEScore, beta_vae_score, beta_vae_score_from_codes
from betavae.metrics.dci import DCI, dci, dci_from_codes
from betavae.metrics.evaluate import (METRIC_TYPES, METRICS, Evaluation, EvaluationProgress, build_metric, evaluate,
                                      evaluate_with_details, resolve_metrics)
from betavae.metrics.factor_vae import FactorVAEScore, factor_vae_score, factor_vae_score_from_codes
from betavae.metrics.mig import MIG, mig, mig_chen_from_posterior, mig_from_codes
from betavae.metrics.modularity import (ModularityExplicitness, modularity_explicitness,
                                        modularity_explicitness_from_codes)
from betavae.metrics.run import ProgressPrinter, VAEEncoder, encoder_fn, evaluate_run, format_table
from betavae.metrics.sap import SAP, sap, sap_from_codes
from betavae.metrics.unsupervised import Unsupervised, unsupervised, unsupervised_from_codes
from betavae.metrics.utils import metric_rng

__all__ = [
    "DCI", "DEFAULT_BATCH_SIZE", "Draw", "Encoded", "Evaluation", "EvaluationProgress", "FactorVAEScore", "METRICS", "METRIC_TYPES",
    "MIG", "Metric", "ModularityExplicitness", "SAP", "BetaVAEScore", "Unsupervised", "VAEEncoder",
    "beta_vae_score", "beta_vae_score_from_codes", "build_metric", "dci", "dci_from_codes", "encoder_fn",
    "ProgressPrinter", "evaluate", "evaluate_run", "evaluate_with_details", "factor_vae_score", "factor_vae_score_from_codes",
    "format_table", "metric_rng", "mig", "mig_chen_from_posterior", "mig_from_codes", "modularity_explicitness",
    "modularity_explicitness_from_codes", "resolve_metrics", "sap", "sap_from_codes", "unsupervised",
    "unsupervised_from_codes",
]
