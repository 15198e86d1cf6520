"""What a finished sweep leaves in SWEEP/: summary.csv and summary.json (one row per trial, and per
weight the mean and spread over seeds), tradeoff.png, and recommendation.json."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from betavae.files import atomic_output, write_atomic, write_json_atomic
from betavae.sweep.recommend import aggregate
from betavae.sweep.spec import SweepSpec
from betavae.sweep.trial import decode_array
from betavae.sweep.udr import udr_scores


def add_udr(trials: list[dict[str, Any]], spec: SweepSpec) -> None:
    """Give every completed trial a ``udr`` metric: its UDR against the other seeds of its weight
    (NaN when fewer than two seeds of that weight completed)."""
    for weight in spec.weights:
        group = [t for t in trials if t["weight"] == weight and t["state"] == "COMPLETE" and "udr_codes" in t]
        for t in group:
            t.setdefault("metrics", {})["udr"] = math.nan
        if len(group) < 2:
            continue
        scores, _ = udr_scores([decode_array(t["udr_codes"]) for t in group],
                               [np.asarray(t["udr_kl_per_dim"]) for t in group],
                               spec.udr_correlation, spec.udr_kl_threshold)
        for t, score in zip(group, scores):
            t["metrics"]["udr"] = float(score)


def _number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def trial_rows(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows for summary.csv: weight, seed, state, terms, every metric (sorted), error."""
    metric_names = sorted({k for t in trials for k in t.get("metrics", {})})
    rows = []
    for t in trials:
        row = {"weight": t["weight"], "seed": t["seed"], "state": t["state"], "trial": t.get("trial"),
               "reconstruction_nll": t.get("reconstruction"), "kl": t.get("kl"), "active_dims": t.get("active_dims"),
               "kl_per_dim": " ".join(f"{v:.4g}" for v in t.get("kl_per_dim", [])), "run_dir": t.get("run_dir", ""),
               "seconds": t.get("seconds")}
        for name in metric_names:
            row[name] = t.get("metrics", {}).get(name)
        row["error"] = t.get("error", "")
        rows.append(row)
    return rows


def write_summary(out: Path, trials: list[dict[str, Any]], metric: str) -> None:
    rows = trial_rows(trials)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["weight"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_atomic(out / "summary.csv", lambda f: f.write(buffer.getvalue()), mode="w")
    clean = [{k: v for k, v in t.items() if k not in ("udr_codes",)} for t in trials]
    for t in clean:
        t["metrics"] = {k: _number(v) for k, v in t.get("metrics", {}).items()}
    summary = {"metric": metric, "trials": clean, "per_weight": aggregate(trials, metric)}
    write_json_atomic(out / "summary.json", _json_safe(summary))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return _number(value)


def plot_tradeoff(path: Path, trials: list[dict[str, Any]], metric: str, weight_symbol: str) -> None:
    """Left: reconstruction NLL against ``metric``, a point per trial coloured by weight, per-weight means
    joined. Middle, right: metric and reconstruction against weight, seeds as dots, mean ± std as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t["state"] == "COMPLETE"]
    weights = sorted({t["weight"] for t in trials})
    cmap = plt.get_cmap("viridis")
    colour = {w: cmap(i / max(len(weights) - 1, 1)) for i, w in enumerate(weights)}
    rows = aggregate(trials, metric)

    def value(t: dict[str, Any]) -> float:
        v = t.get("metrics", {}).get(metric)
        return math.nan if v is None else float(v)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    for w in weights:
        pts = [(value(t), t["reconstruction"]) for t in done if t["weight"] == w]
        if pts:
            ax.scatter(*zip(*pts), color=colour[w], label=f"{weight_symbol} = {w:g}", s=30)
    means = [(r["metric"]["mean"], r["reconstruction"]["mean"]) for r in rows if r["metric"]["n"]]
    if means:
        ax.plot(*zip(*means), color="0.4", lw=1, marker="D", ms=5, zorder=0, label="mean per weight")
    ax.set_xlabel(metric)
    ax.set_ylabel("reconstruction NLL (nats per image)")
    ax.set_title("trade-off: reconstruction against\ndisentanglement", fontsize=10)
    ax.legend(fontsize=8)
    for ax, key, label in ((axes[1], "metric", metric), (axes[2], "reconstruction", "reconstruction NLL")):
        for t in done:
            y = value(t) if key == "metric" else t["reconstruction"]
            ax.scatter(t["weight"], y, color=colour[t["weight"]], s=18, alpha=0.7)
        xs = [r["weight"] for r in rows if r[key]["n"]]
        ax.errorbar(xs, [r[key]["mean"] for r in rows if r[key]["n"]], yerr=[r[key]["std"] for r in rows if r[key]["n"]],
                    color="k", marker="D", ms=4, capsize=4, lw=1)
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log")
        ax.set_xlabel(weight_symbol)
        ax.set_ylabel(label)
        ax.set_title(f"{label} against {weight_symbol}\n(mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
