"""What a finished sweep leaves in SWEEP/: summary.csv and summary.json (one row per trial, and per
weight the mean and spread over seeds of every measure), tradeoff.png, and recommendation.json."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from betavae.files import atomic_output, write_atomic, write_json_atomic
from betavae.sweep.recommend import LOWER_IS_BETTER, aggregate, metric_names
from betavae.sweep.spec import SweepSpec
from betavae.sweep.trial import READBACK_PREFIX, decode_array
from betavae.sweep.udr import udr_scores


#: The trade-off figure's file name in SWEEP/ (``SWEEP/report.html`` embeds it).
TRADEOFF_FIGURE = "tradeoff.png"
#: Metric values the trade-off figure plots beside the ranking metric whenever the trials carry them.
HEADLINE_METRICS = ("mig.mig", "factor_vae_score.eval_accuracy")
#: How the figure names some metric values (any other shows as its key, e.g. ``dci.disentanglement``).
METRIC_LABELS = {"mig.mig": "MIG", "factor_vae_score.eval_accuracy": "FactorVAE score",
                 "beta_vae_score.eval_accuracy": "BetaVAE score", "dci.disentanglement": "DCI disentanglement",
                 "sap.sap": "SAP", "udr": "UDR"}


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
    names = metric_names(trials)
    rows = []
    for t in trials:
        row = {"weight": t["weight"], "seed": t["seed"], "state": t["state"], "trial": t.get("trial"),
               "reconstruction_nll": t.get("reconstruction"), "kl": t.get("kl"), "active_dims": t.get("active_dims"),
               "turn_degrees": t.get("turn_degrees"), "kl_per_dim": " ".join(f"{v:.4g}" for v in t.get("kl_per_dim", [])),
               "run_dir": t.get("run_dir", ""), "seconds": t.get("seconds")}
        for name in names:
            row[name] = t.get("metrics", {}).get(name)
        row["error"] = t.get("error", "")
        rows.append(row)
    return rows


def write_summary(out: Path, trials: list[dict[str, Any]], metric: str) -> None:
    """``out/summary.csv`` (:func:`trial_rows`) and ``out/summary.json``: ``metric`` (the ranking metric),
    ``trials`` (every record, without its UDR codes; non-finite values as null) and ``per_weight``
    (:func:`betavae.sweep.recommend.aggregate`: per weight, the spread over seeds of every measure)."""
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


def headline_metrics(trials: list[dict[str, Any]], metric: str) -> list[str]:
    """What the trade-off figure plots against reconstruction: the ranking ``metric`` first, then each of
    :data:`HEADLINE_METRICS` that some completed trial has a finite value of."""
    carried = {name for t in trials if t["state"] == "COMPLETE"
               for name, v in (t.get("metrics") or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return [metric] + [name for name in HEADLINE_METRICS if name != metric and name in carried]


def metric_label(name: str) -> str:
    """A metric value's name as an axis shows it: ``MIG``, ``FactorVAE score``, ``shape shown`` (the share of
    reconstructions that show the shape), or the key itself."""
    if name.startswith(READBACK_PREFIX + "."):
        return f"{name[len(READBACK_PREFIX) + 1:]} shown"
    return METRIC_LABELS.get(name, name)


def readback_factors(trials: list[dict[str, Any]]) -> list[str]:
    """The factors whose share of reconstructions that show them (``reconstructed_factors.<factor>``) some
    completed trial carries, in the order the trials list them."""
    factors: list[str] = []
    for t in trials:
        if t["state"] != "COMPLETE":
            continue
        for name in t.get("metrics") or {}:
            factor = name[len(READBACK_PREFIX) + 1:] if name.startswith(READBACK_PREFIX + ".") else None
            if factor and factor not in factors:
                factors.append(factor)
    return factors


def plot_tradeoff(path: Path, trials: list[dict[str, Any]], metric: str, weight_symbol: str,
                  recommended: float | None = None) -> None:
    """Write the sweep's trade-off figure to ``path``.

    Top row, one panel per metric of :func:`headline_metrics`: reconstruction NLL against that metric,
    a dot per completed trial coloured by its weight, each weight's mean with ±1 std bars on both axes,
    the means joined in weight order, and the ``recommended`` weight's mean ringed and labelled. Bottom
    row: each of those metrics, and the reconstruction, against the weight (seeds as dots, mean ± std
    as bars, the recommended weight dashed); when the trials carry it (:func:`readback_factors`), one
    more panel: per factor, the share of reconstructions that show it against the weight (mean ± std),
    beside the share for a decoder that ignores the code (dotted).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    done = [t for t in trials if t["state"] == "COMPLETE"]
    weights = sorted({float(t["weight"]) for t in trials})
    cmap = plt.get_cmap("viridis")
    colour = {w: cmap(0.9 * i / max(len(weights) - 1, 1)) for i, w in enumerate(weights)}  # 0.9: no pale yellow
    rows = aggregate(trials, metric)
    metrics = headline_metrics(trials, metric)
    chosen = None if recommended is None else float(recommended)

    def value(t: dict[str, Any], name: str) -> float:
        if name == "reconstruction":
            v = t.get("reconstruction")
        else:
            v = (t.get("metrics") or {}).get(name)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan

    def stats(row: dict[str, Any], name: str) -> dict[str, Any]:
        return row["reconstruction"] if name == "reconstruction" else row["metrics"].get(name, row["metric"])

    factors = readback_factors(trials)
    ncols = len(metrics) + 1 + (1 if factors else 0)
    fig = plt.figure(figsize=(4.8 * ncols, 9.0))
    grid = fig.add_gridspec(2, ncols)
    top = [fig.add_subplot(grid[0, i]) for i in range(len(metrics))] + [fig.add_subplot(grid[0, len(metrics):])]
    bottom = [fig.add_subplot(grid[1, i]) for i in range(ncols)]
    for ax, name in zip(top, metrics):
        label = metric_label(name)
        for w in weights:
            points = [(value(t, name), value(t, "reconstruction")) for t in done if float(t["weight"]) == w]
            if points:
                ax.scatter(*zip(*points), color=colour[w], s=26, alpha=0.75, zorder=2)
        means = [(r["weight"], stats(r, name), r["reconstruction"]) for r in rows
                 if stats(r, name)["n"] and r["reconstruction"]["n"]]
        if means:
            ax.plot([m["mean"] for _, m, _ in means], [rc["mean"] for _, _, rc in means], color="0.45", lw=1, zorder=1)
        for w, m, rc in means:
            ax.errorbar(m["mean"], rc["mean"], xerr=m["std"], yerr=rc["std"], fmt="D", ms=7, color=colour[w], mec="k",
                        mew=0.8, ecolor=colour[w], elinewidth=1.4, capsize=3, zorder=3)
            ax.annotate(f"{w:g}", (m["mean"], rc["mean"]), xytext=(6, -11), textcoords="offset points", fontsize=8,
                        color="0.25")
            if chosen is not None and w == chosen:
                ax.scatter([m["mean"]], [rc["mean"]], s=380, facecolors="none", edgecolors="crimson", linewidths=2,
                           zorder=4)
                ax.annotate(f"recommended {weight_symbol} = {w:g}", (m["mean"], rc["mean"]), xytext=(12, 12),
                            textcoords="offset points", fontsize=9, color="crimson", fontweight="bold")
        better = "←" if name in LOWER_IS_BETTER else "→"
        ax.set_xlabel(f"{label} ({better} more disentangled)")
        ax.set_ylabel("reconstruction NLL, nats per image (↓ better)")
        ax.set_title(f"reconstruction against {label}", fontsize=10)
        ax.grid(alpha=0.3)
    legend = top[-1]
    legend.axis("off")
    handles = [Line2D([], [], ls="", marker="o", color=colour[w], label=f"{weight_symbol} = {w:g}") for w in weights]
    handles += [Line2D([], [], ls="", marker="D", color="0.6", mec="k", label="mean over seeds, ±1 std bars"),
                Line2D([], [], color="0.45", lw=1, label=f"means joined in {weight_symbol} order")]
    if chosen is not None:
        handles.append(Line2D([], [], ls="", marker="o", ms=14, mfc="none", mec="crimson", mew=2,
                              label=f"recommended {weight_symbol} = {chosen:g}"))
    legend.legend(handles=handles, loc="center", fontsize=9, frameon=False,
                  title=f"one dot per trial (seed),\ncoloured by {weight_symbol}")

    for ax, name in zip(bottom, metrics + ["reconstruction"]):
        label = "reconstruction NLL" if name == "reconstruction" else metric_label(name)
        for t in done:
            ax.scatter(t["weight"], value(t, name), color=colour[float(t["weight"])], s=18, alpha=0.7)
        shown = [r for r in rows if stats(r, name)["n"]]
        xs = [r["weight"] for r in shown]
        ax.errorbar(xs, [stats(r, name)["mean"] for r in shown], yerr=[stats(r, name)["std"] for r in shown],
                    color="k", marker="D", ms=4, capsize=4, lw=1)
        _weight_axis(ax, xs, chosen, weight_symbol)
        ax.set_ylabel(label)
        ax.set_title(f"{label} against {weight_symbol}\n(mean ± std over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
    if factors:
        _plot_readback(bottom[-1], trials, rows, factors, weight_symbol, chosen)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _weight_axis(ax: Any, weights: list[float], chosen: float | None, weight_symbol: str) -> None:
    """A panel's horizontal axis of weights: the recommended one dashed, a log scale when they span a factor of
    8 or more (ticked at the weights)."""
    if chosen is not None:
        ax.axvline(chosen, color="crimson", ls="--", lw=1, alpha=0.8)
    if weights and min(weights) > 0 and max(weights) / min(weights) >= 8:
        ax.set_xscale("log")
        ax.set_xticks(weights, [f"{w:g}" for w in weights])
        ax.minorticks_off()
    ax.set_xlabel(weight_symbol)


def _plot_readback(ax: Any, trials: list[dict[str, Any]], rows: list[dict[str, Any]], factors: list[str],
                   weight_symbol: str, chosen: float | None) -> None:
    """Per factor, the share of reconstructions that show it against the weight (mean ± std over seeds, in
    %), with the share for a decoder that ignores the code dotted in the same colour."""
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10")
    floors = next((t["readback_floor"] for t in trials if t["state"] == "COMPLETE" and t.get("readback_floor")), {})
    xs: list[float] = []
    for i, factor in enumerate(factors):
        spread = [(r["weight"], r["metrics"].get(f"{READBACK_PREFIX}.{factor}", {})) for r in rows]
        spread = [(w, st) for w, st in spread if st.get("n")]
        xs = sorted(set(xs) | {w for w, _ in spread})
        ax.errorbar([w for w, _ in spread], [100 * st["mean"] for _, st in spread],
                    yerr=[100 * st["std"] for _, st in spread], color=colours(i % 10), marker="o", ms=4, capsize=3,
                    lw=1.2, label=factor)
        if isinstance(floors.get(factor), (int, float)):
            ax.axhline(100 * floors[factor], color=colours(i % 10), ls=":", lw=1)
    _weight_axis(ax, xs, chosen, weight_symbol)
    ax.set_ylim(0, 104)
    ax.set_ylabel("reconstructions that show the factor (%)")
    ax.set_title(f"factors the reconstructions show, against {weight_symbol}\n(mean ± std over seeds; "
                 "dotted: code ignored)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
