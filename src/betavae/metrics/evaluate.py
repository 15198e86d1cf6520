"""The metric registry and ``evaluate``: every metric on one encoder, each distinct image encoded once.

``evaluate`` first lets every metric draw its samples (each from its own generator, derived from
the seed and the metric's name), unites the drawn dataset indices, encodes each distinct image
once, and scores every metric on codes looked up from that table. Under the full protocol on
dSprites the metrics ask for about 2.95 million images of a 737,280-image grid, about 725,000 of
them distinct, so the encoder runs about four times less. ``cache=False`` encodes every drawn image
afresh, metric by metric: the same numbers, for checking and for timing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from betavae.data.base import ImageDataset
from betavae.errors import ConfigError
from betavae.metrics.base import DEFAULT_BATCH_SIZE, CodeTable, Encode, Metric, encode_draw
from betavae.metrics.beta_vae import BetaVAEScore, beta_vae_score
from betavae.metrics.dci import DCI, dci
from betavae.metrics.factor_vae import FactorVAEScore, factor_vae_score
from betavae.metrics.mig import MIG, mig
from betavae.metrics.modularity import ModularityExplicitness, modularity_explicitness
from betavae.metrics.sap import SAP, sap
from betavae.metrics.unsupervised import Unsupervised, unsupervised
from betavae.metrics.utils import metric_rng

#: The one list of metrics: (protocol parameters, public sampling function), in report order.
_REGISTRY: tuple[tuple[type[Metric], Callable[..., dict[str, float]]], ...] = (
    (BetaVAEScore, beta_vae_score),
    (FactorVAEScore, factor_vae_score),
    (MIG, mig),
    (SAP, sap),
    (DCI, dci),
    (ModularityExplicitness, modularity_explicitness),
    (Unsupervised, unsupervised),
)

#: Metric name -> public sampling function ``f(dataset, encode, rng, **parameters) -> dict``.
METRICS: dict[str, Callable[..., dict[str, float]]] = {cls.name: function for cls, function in _REGISTRY}
#: Metric name -> its parameter dataclass (a :class:`Metric`).
METRIC_TYPES: dict[str, type[Metric]] = {cls.name: cls for cls, _ in _REGISTRY}


def resolve_metrics(metrics: str | Iterable[str], dataset: ImageDataset) -> list[str]:
    """Metric names from ``"all"``, ``"mig,dci"`` or a list; ``"all"`` on a dataset without factors
    means the metrics that need none."""
    if isinstance(metrics, str):
        if metrics == "all":
            return [n for n, cls in METRIC_TYPES.items() if dataset.has_factors or not cls.needs_factors]
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    names = list(dict.fromkeys(metrics))  # keep order, drop repeats
    unknown = [n for n in names if n not in METRIC_TYPES]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(METRIC_TYPES)} or 'all'.")
    if not names:
        raise ConfigError(f"no metric selected; choose from: {', '.join(METRIC_TYPES)} or 'all'.")
    return names


def build_metric(name: str, parameters: Mapping[str, Any] | None = None) -> Metric:
    """The :class:`Metric` called ``name`` with protocol defaults overridden by ``parameters``."""
    if name not in METRIC_TYPES:
        raise ConfigError(f"unknown metric '{name}'; choose from: {', '.join(METRIC_TYPES)}.")
    cls = METRIC_TYPES[name]
    known = {f.name for f in fields(cls)}
    unknown = set(parameters or {}) - known
    if unknown:
        raise ConfigError(f"unknown parameter(s) {sorted(unknown)} for metric '{name}'; it takes {sorted(known)}.")
    return cls(**dict(parameters or {}))


@dataclass(frozen=True)
class EvaluationProgress:
    """What an evaluation is doing, as told to a ``progress`` callback.

    ``phase`` is ``"encoding"`` (``done`` of ``total`` distinct images encoded), ``"scoring"``
    (metric number ``done + 1`` of ``total``, called ``metric``, starts) or ``"done"``.
    """

    phase: str
    done: int
    total: int
    metric: str = ""


Progress = Callable[[EvaluationProgress], None]


@dataclass
class Evaluation:
    """Values of every metric and how they were obtained."""

    values: dict[str, dict[str, float]]
    metrics: dict[str, Metric]
    seed: int
    cache: bool
    #: Seconds per metric: drawing and scoring (and encoding when ``cache`` is False).
    seconds: dict[str, float] = field(default_factory=dict)
    #: Seconds spent encoding the shared table (``cache`` True only).
    encode_seconds: float = 0.0
    #: Images the metrics asked for (with repeats), images encoded, and images passed through the
    #: encoder counting the padding of each stream's last batch.
    images_requested: int = 0
    images_encoded: int = 0
    images_forwarded: int = 0

    def parameters(self, name: str) -> dict[str, Any]:
        return asdict(self.metrics[name])


def _padded(n: int, batch_size: int) -> int:
    return -(-n // batch_size) * batch_size


def evaluate_with_details(encode: Encode, dataset: ImageDataset, metrics: str | Iterable[str] = "all", seed: int = 0,
                          *, cache: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
                          params: Mapping[str, Mapping[str, Any]] | None = None,
                          progress: Progress | None = None) -> Evaluation:
    """:func:`evaluate` with the parameters, timings and image counts of the evaluation; ``progress``
    is told of each step (:class:`EvaluationProgress`)."""
    tell = progress or (lambda event: None)
    names = resolve_metrics(metrics, dataset)
    params = dict(params or {})
    stray = set(params) - set(METRIC_TYPES)
    if stray:
        raise ConfigError(f"params given for unknown metric(s) {sorted(stray)}; choose from: {', '.join(METRIC_TYPES)}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    built = {name: build_metric(name, params.get(name)) for name in names}
    for metric in built.values():  # every bad input fails here, before any encoding
        metric.check(dataset, encode)
    result = Evaluation(values={}, metrics=built, seed=int(seed), cache=cache)
    rngs = {name: metric_rng(seed, name) for name in names}
    draws, seconds = {}, {}
    for name, metric in built.items():
        start = time.perf_counter()
        draws[name] = metric.draw(dataset, rngs[name])
        seconds[name] = time.perf_counter() - start
        result.images_requested += draws[name].num_images
    if cache:
        start = time.perf_counter()
        all_indices = np.concatenate([idx.reshape(-1) for d in draws.values() for idx in d.indices.values()])
        table = CodeTable(dataset, encode, all_indices, batch_size, any(m.uses_posterior for m in built.values()),
                          lambda done, total: tell(EvaluationProgress("encoding", done, total)))
        result.encode_seconds = time.perf_counter() - start
        result.images_encoded = len(table)
        result.images_forwarded = _padded(len(table), batch_size)
    for number, (name, metric) in enumerate(built.items()):
        tell(EvaluationProgress("scoring", number, len(built), name))
        start = time.perf_counter()
        draw = draws[name]
        if cache:
            encoded = {key: table.lookup(idx, metric.uses_posterior) for key, idx in draw.indices.items()}
        else:
            encoded = encode_draw(dataset, encode, draw, batch_size, metric.uses_posterior)
            result.images_encoded += draw.num_images
            result.images_forwarded += _padded(draw.num_images, batch_size)
        result.values[name] = metric.score(draw, encoded, rngs[name])
        result.seconds[name] = seconds[name] + time.perf_counter() - start
    tell(EvaluationProgress("done", len(built), len(built)))
    return result


def evaluate(encode: Encode, dataset: ImageDataset, metrics: str | Iterable[str] = "all", seed: int = 0, *,
             cache: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
             params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, float]]:
    """Every selected metric of ``encode`` on ``dataset``: ``{metric: {value name: value}}``.

    ``encode`` maps float32 images ``(n, C, H, W)`` to codes ``(n, D)`` (the mean representation by
    default, see :func:`betavae.metrics.encoder_fn`). ``metrics`` is ``"all"``, a comma-separated
    string or a list of names from :data:`METRICS`; ``params`` overrides protocol parameters per
    metric, e.g. ``{"mig": {"num_train": 2000}}``. Metric ``m`` draws from
    ``metric_rng(seed, m)``, so ``METRICS[m](dataset, encode, metric_rng(seed, m))`` gives the
    same value. ``cache=False`` encodes every drawn image afresh (same values, slower).
    """
    return evaluate_with_details(encode, dataset, metrics, seed, cache=cache, batch_size=batch_size,
                                 params=params).values
