"""What a sweep is: the grid of (weight, seed) pairs, the training config shared by every trial,
what to evaluate, and where the study lives. Checked completely before any work starts."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from betavae.checks import check_output_path, check_seed, shown
from betavae.errors import ConfigError
from betavae.metrics import METRIC_TYPES
from betavae.objectives import OBJECTIVES
from betavae.sweep.recommend import DEFAULT_TOLERANCE
from betavae.sweep.storage import check_storage_url
from betavae.sweep.udr import CORRELATIONS, KL_THRESHOLD
from betavae.training.config import TrainConfig
from betavae.training.parallel import check_group

#: objective -> the TrainConfig field a sweep varies; each objective class names its own (``weight_field``).
WEIGHT_FIELDS: dict[str, str] = {name: cls.weight_field for name, cls in OBJECTIVES.items() if cls.weight_field}
#: The most trials one sweep holds, local worker processes, and seconds between heartbeats.
MAX_TRIALS, MAX_WORKERS, MAX_HEARTBEAT = 10_000, 1024, 86_400
#: Protocol sample-count parameters that ``eval_samples`` scales down (those a metric has).
_SAMPLE_FIELDS = {"num_train": 1.0, "num_eval": 0.5, "num_test": 0.5, "num_variance_estimate": 1.0,
                  "chen_num_samples": 1.0}


@dataclass
class SweepSpec:
    """A sweep: every (weight, seed) pair trains ``base`` with that weight and seed, then is evaluated."""

    out: str
    weights: list[float]
    seeds: list[int]
    base: dict[str, Any] = field(default_factory=dict)  # TrainConfig values shared by every trial
    metrics: str = "all"  # what evaluate_run computes ("all": every metric the data supports)
    metric: str | None = None  # what the recommendation ranks by (None: mig with factors, else udr)
    # Optuna storage URL (None: sqlite:///OUT/study.db); may hold a password, so never in repr()
    storage: str | None = field(default=None, repr=False)
    study_name: str | None = None
    workers: int = 1
    parallel: int = 1  # trials each worker trains together in one process (betavae.training.parallel)
    tolerance: float = DEFAULT_TOLERANCE
    eval_samples: int | None = None  # scale the metrics' sample counts down to this (None: full protocol)
    eval_seed: int = 0
    udr_samples: int = 1000
    udr_correlation: str = "spearman"
    udr_kl_threshold: float = KL_THRESHOLD
    heartbeat_seconds: int = 10
    poll_seconds: float = 2.0

    @property
    def objective(self) -> str:
        return str(self.base.get("objective", "beta"))

    @property
    def weight_field(self) -> str:
        return WEIGHT_FIELDS[self.objective]

    @property
    def weight_symbol(self) -> str:
        return OBJECTIVES[self.objective].weight_symbol or self.weight_field

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"

    @property
    def name(self) -> str:
        return self.study_name or f"betavae-sweep-{Path(self.out).resolve().name}"

    def grid(self) -> list[tuple[float, int]]:
        """Every (weight, seed) pair, weights outermost."""
        return [(w, s) for w in self.weights for s in self.seeds]

    def trial_name(self, weight: float, seed: int) -> str:
        return f"{self.objective}-{self.weight_field}{weight:g}-seed{seed}"

    def trial_config(self, weight: float, seed: int) -> TrainConfig:
        run_dir = Path(self.out) / "trials" / self.trial_name(weight, seed)
        values = {**self.base, self.weight_field: float(weight), "seed": int(seed), "out": str(run_dir),
                  "overwrite": False}
        return TrainConfig.from_dict(values)

    def metric_params(self) -> dict[str, dict[str, int]]:
        """Per-metric parameter overrides that bring every sample count down to ``eval_samples``."""
        if self.eval_samples is None:
            return {}
        params: dict[str, dict[str, int]] = {}
        for name, cls in METRIC_TYPES.items():
            names = {f.name for f in fields(cls)}
            params[name] = {k: max(int(self.eval_samples * scale), 2) for k, scale in _SAMPLE_FIELDS.items() if k in names}
        return params

    def comparison_key(self) -> dict[str, Any]:
        """What must match when a study is joined or resumed (the grid's meaning, not how it runs)."""
        values = asdict(self)
        for name in ("out", "storage", "study_name", "workers", "parallel", "heartbeat_seconds", "poll_seconds"):
            values.pop(name)
        values["base"] = {k: v for k, v in self.base.items() if k not in ("device", "out", "overwrite")}
        return values

    def validate(self) -> "SweepSpec":
        """Raise :class:`ConfigError` naming the first bad value and the fix."""
        objective = self.objective
        if objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective '{objective}'; choose one of: {', '.join(OBJECTIVES)}.")
        if objective not in WEIGHT_FIELDS:
            raise ConfigError(f"objective '{objective}' has no weight a sweep knows how to vary.")
        if not self.weights:
            raise ConfigError(f"no {self.weight_symbol} values to sweep; pass e.g. --weights 1,2,4,8.")
        for w in self.weights:
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ConfigError(f"every swept {self.weight_field} must be a finite number >= 0, got {w!r}.")
        if len(set(self.weights)) != len(self.weights):
            raise ConfigError(f"repeated {self.weight_field} values in {self.weights}; give each once.")
        if not self.seeds:
            raise ConfigError("no seeds to sweep; pass e.g. --seeds 3 (seeds 0, 1, 2) or --seeds 0,5,7.")
        for seed in self.seeds:
            check_seed(seed, "every seed")
        check_seed(self.eval_seed, "eval_seed")
        if len(self.weights) * len(self.seeds) > MAX_TRIALS:
            raise ConfigError(f"{len(self.weights):,} weights x {len(self.seeds):,} seeds make "
                              f"{len(self.weights) * len(self.seeds):,} trials, more than the {MAX_TRIALS:,} a sweep "
                              "holds (each is a trained run); sweep fewer values, or split them over several --out.")
        check_output_path(self.out, "--out")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"repeated seeds in {self.seeds}; give each once.")
        for key in ("seed", "out", self.weight_field):
            if key in self.base:
                raise ConfigError(f"--{key.replace('_', '-')} is set by the sweep for each trial; drop it.")
        if not isinstance(self.workers, int) or not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be a whole number from 1 to {MAX_WORKERS} (each is a process with its "
                              f"own model and data; one per core is the most that helps), got {shown(self.workers)}.")
        if not isinstance(self.parallel, int) or isinstance(self.parallel, bool) or self.parallel < 1:
            raise ConfigError(f"parallel must be a whole number >= 1 (trials trained together), got {self.parallel!r}.")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ConfigError(f"the reconstruction tolerance must be a number >= 0, got {self.tolerance!r}.")
        if self.eval_samples is not None and self.eval_samples < 10:
            raise ConfigError(f"eval_samples must be at least 10, got {self.eval_samples}.")
        if self.udr_samples < 10:
            raise ConfigError(f"udr_samples must be at least 10, got {self.udr_samples}.")
        if self.udr_correlation not in CORRELATIONS:
            raise ConfigError(f"unknown UDR correlation '{self.udr_correlation}'; choose one of: {', '.join(CORRELATIONS)}.")
        if not isinstance(self.heartbeat_seconds, int) or not 1 <= self.heartbeat_seconds <= MAX_HEARTBEAT:
            raise ConfigError(f"heartbeat must be a whole number of seconds from 1 to {MAX_HEARTBEAT} (a trial silent "
                              f"for 3 of them is run again), got {shown(self.heartbeat_seconds)}.")
        if self.metrics != "all":
            unknown = [m for m in self.metrics.split(",") if m.strip() and m.strip() not in METRIC_TYPES]
            if unknown or not self.metrics.strip():
                raise ConfigError(f"unknown metric(s) {unknown or [self.metrics]}; choose from: {', '.join(METRIC_TYPES)} or 'all'.")
        if self.metric is not None:
            head = self.metric.split(".")[0]
            if self.metric != "udr" and head not in METRIC_TYPES:
                raise ConfigError(f"unknown metric '{self.metric}' to rank by; choose udr, one of "
                                  f"{', '.join(METRIC_TYPES)}, or METRIC.VALUE such as dci.disentanglement.")
            if self.metric != "udr" and self.metrics != "all" and head not in [m.strip() for m in self.metrics.split(",")]:
                raise ConfigError(f"--metric {self.metric} is not among the evaluated --metrics {self.metrics}; add {head}.")
        check_storage_url(self.storage_url)
        for weight, seed in self.grid()[:1]:
            self.trial_config(weight, seed).validate()  # the shared training config, checked before any work
        if self.parallel > 1:
            self._check_parallel()
        return self

    def _check_parallel(self) -> None:
        """Refuse training settings that trials trained together (``--parallel``) cannot follow."""
        if self.base.get("skip_nonfinite"):
            raise ConfigError("--skip-nonfinite skips one model's bad steps, which trials trained together (--parallel) "
                              "cannot do; drop --skip-nonfinite or use --parallel 1.")
        if self.base.get("compile", "off") != "off":
            raise ConfigError(f"--compile {self.base['compile']} compiles one model's forward pass; trials trained "
                              "together (--parallel) run uncompiled. Drop --compile or use --parallel 1.")
        check_group([self.trial_config(weight, seed) for weight, seed in self.grid()[:2]])


def metric_key(metric: str) -> str:
    """``mig`` -> ``mig.mig``; ``dci`` -> ``dci.disentanglement``; ``udr`` and ``a.b`` stay."""
    if metric == "udr" or "." in metric:
        return metric
    cls = METRIC_TYPES.get(metric)
    return f"{metric}.{cls.primary_value if cls is not None else metric}"


def default_workers_threads(workers: int) -> int:
    """Torch threads per local worker so that K workers share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))
