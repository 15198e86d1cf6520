"""Per-weight aggregates of a sweep's trials and the recommended weight, with its reason in words.

The rule (docs/sweep.md): among the weights whose mean reconstruction NLL is within ``tolerance``
(relative) of the best mean reconstruction, recommend the one with the best mean metric. Seeds whose
trial failed or whose metric is NaN are left out of the means; a weight with no finite metric cannot
be recommended. Ties on the metric go to the better reconstruction, then to the smaller weight.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

#: Metric values where smaller is better (the rest, e.g. MIG, DCI, UDR, are better when larger).
LOWER_IS_BETTER = ("unsupervised.gaussian_total_correlation", "unsupervised.gaussian_wasserstein_correlation",
                   "unsupervised.gaussian_wasserstein_correlation_norm", "unsupervised.mutual_info_score")
#: Default relative tolerance on reconstruction: within 10% of the best mean NLL.
DEFAULT_TOLERANCE = 0.10


def _finite(values: Iterable[Any]) -> np.ndarray:
    array = np.array([v for v in values if isinstance(v, (int, float)) and math.isfinite(v)], dtype=np.float64)
    return array


def _stats(values: Iterable[Any]) -> dict[str, float]:
    finite = _finite(values)
    if len(finite) == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
            "min": float(finite.min()), "max": float(finite.max()), "n": int(len(finite))}


def metric_names(trials: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every metric value (``mig.mig``, ``factor_vae_score.eval_accuracy``, ``udr``, ...) any trial carries, sorted."""
    return sorted({name for t in trials for name in (t.get("metrics") or {})})


def aggregate(trials: list[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per weight (ascending): mean, std, min, max and count (``n``) over seeds of
    reconstruction, KL, active dims, ``turn_degrees`` (over the seeds whose codes have a pair of factors)
    and ``metric`` (the ranking metric, under ``metric``), and of every metric value the trials carry
    (under ``metrics``, by name); trials that did not complete count in ``failed``. ``std`` is the sample
    standard deviation (0 for one seed)."""
    names = metric_names(trials)
    rows = []
    for weight in sorted({float(t["weight"]) for t in trials}):
        group = [t for t in trials if float(t["weight"]) == weight]
        done = [t for t in group if t.get("state") == "COMPLETE"]
        rows.append({
            "weight": weight,
            "seeds": sorted(int(t["seed"]) for t in group),
            "completed": len(done),
            "failed": len(group) - len(done),
            "reconstruction": _stats(t.get("reconstruction") for t in done),
            "kl": _stats(t.get("kl") for t in done),
            "active_dims": _stats(t.get("active_dims") for t in done),
            "turn_degrees": _stats(t.get("turn_degrees") for t in done),
            "metric": _stats((t.get("metrics") or {}).get(metric, math.nan) for t in done),
            "metrics": {name: _stats((t.get("metrics") or {}).get(name) for t in done) for name in names},
        })
    return rows


def recommend(trials: list[Mapping[str, Any]], metric: str, tolerance: float = DEFAULT_TOLERANCE,
              weight_name: str = "β") -> dict[str, Any]:
    """The recommended weight of ``trials`` (dicts with weight, seed, state, reconstruction, metrics)
    under the rule of the module docstring: ``{"weight", "reason", "metric", "tolerance", ...}``.

    ``weight`` is None, with the reason, when no weight has both a finite reconstruction and metric.
    """
    rows = aggregate(trials, metric)
    higher = metric not in LOWER_IS_BETTER
    scored = [r for r in rows if r["reconstruction"]["n"] and r["metric"]["n"]]
    result: dict[str, Any] = {"metric": metric, "higher_is_better": higher, "tolerance": tolerance,
                              "weight_name": weight_name, "per_weight": rows}
    if not scored:
        result.update(weight=None, reason=(
            f"no {weight_name} has both a finite reconstruction and a finite {metric} (every trial failed or its "
            "metric is undefined), so none can be recommended; see the failed trials in summary.csv."))
        return result
    best_recon = min(r["reconstruction"]["mean"] for r in scored)
    limit = best_recon + tolerance * abs(best_recon)
    eligible = [r for r in scored if r["reconstruction"]["mean"] <= limit]
    sign = 1.0 if higher else -1.0
    # best metric first; ties: better reconstruction, then the smaller weight
    chosen = min(eligible, key=lambda r: (-sign * r["metric"]["mean"], r["reconstruction"]["mean"], r["weight"]))
    excluded = [r for r in scored if r not in eligible]
    better_excluded = [r for r in excluded if sign * r["metric"]["mean"] > sign * chosen["metric"]["mean"]]
    ties = [r for r in eligible if r is not chosen and r["metric"]["mean"] == chosen["metric"]["mean"]]
    m, rc = chosen["metric"], chosen["reconstruction"]
    reason = (
        f"{weight_name} = {chosen['weight']:g} has the {'highest' if higher else 'lowest'} mean {metric} "
        f"({m['mean']:.4g} ± {m['std']:.2g} over {m['n']} seed(s)) among the {weight_name} values whose mean "
        f"reconstruction NLL ({rc['mean']:.4g} nats) stays within {100 * tolerance:g}% of the best "
        f"({best_recon:.4g} nats, limit {limit:.4g})."
    )
    if better_excluded:
        reason += " " + ", ".join(
            f"{weight_name} = {r['weight']:g} scores {r['metric']['mean']:.4g} but reconstructs worse "
            f"({r['reconstruction']['mean']:.4g} nats)" for r in better_excluded) + ", beyond the tolerance."
    if ties:
        tied = ", ".join(format(r["weight"], "g") for r in ties)
        reason += f" Tied on {metric} with {tied}: the better reconstruction, then the smaller weight, wins."

    failed = sum(r["failed"] for r in rows)
    if failed:
        reason += f" {failed} trial(s) failed and are left out of the means."
    result.update(weight=chosen["weight"], reason=reason, best_reconstruction=best_recon, reconstruction_limit=limit,
                  eligible=[r["weight"] for r in eligible])
    return result
