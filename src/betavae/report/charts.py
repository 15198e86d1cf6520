"""Charts drawn for the HTML reports (returned as PNG bytes, not written to the run directory).

The run's own figures (reconstructions, samples, traversals, the main training curves) are drawn by
:mod:`betavae.report.figures` and embedded as they are; these are the report's additions.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLLAPSED_COLOR = "0.72"
ACTIVE_COLOR = "tab:blue"

#: Titles of the logged terms the report plots, where a plain name helps; other keys show as logged.
TERM_TITLES = {
    "elbo": "ELBO (nats / image, higher is better)",
    "loss": "loss being minimised (nats / image)",
    "active_dims": "active dims (KL ≥ threshold)",
    "beta": "β in effect",
}


def png_bytes(fig: plt.Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def dim_label(dim: int, kl: float, threshold: float) -> str:
    return f"z{dim}  KL {kl:.2f}" + ("  (collapsed)" if kl < threshold else "")


def term_curves(history: list[dict[str, Any]], keys: Sequence[str], ncols: int = 4) -> bytes:
    """One small panel per logged scalar ``key`` against step."""
    steps = [r["step"] for r in history]
    ncols = min(ncols, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.5 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(s, r[key]) for s, r in zip(steps, history) if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:purple", lw=1.3)
        ax.set_title(TERM_TITLES.get(key, key), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    return png_bytes(fig)


def kl_bars(kl_per_dim: Sequence[float], threshold: float) -> bytes:
    """Final KL of each latent dim, largest first; collapsed dims grey and hatched, threshold dashed."""
    kl = np.asarray(kl_per_dim, dtype=float)
    order = np.argsort(kl)[::-1]
    collapsed = kl[order] < threshold
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(kl) + 1.5), 3.0))
    bars = ax.bar(range(len(kl)), kl[order], color=[COLLAPSED_COLOR if c else ACTIVE_COLOR for c in collapsed],
                  edgecolor="0.35", linewidth=0.6)
    for bar, is_collapsed in zip(bars, collapsed):
        if is_collapsed:
            bar.set_hatch("//")
    ax.axhline(threshold, color="tab:red", ls="--", lw=0.9, label=f"collapse threshold {threshold:g} nats")
    ax.set_xticks(range(len(kl)), [f"z{d}" for d in order], fontsize=8)
    for x, (value, is_collapsed) in enumerate(zip(kl[order], collapsed)):
        ax.annotate(f"{value:.2f}" + ("\ncollapsed" if is_collapsed else ""), (x, value), ha="center", va="bottom",
                    fontsize=7, color="0.4" if is_collapsed else "black", xytext=(0, 2), textcoords="offset points")
    ax.set_ylabel("KL (nats)")
    ax.set_ylim(0, max(float(kl.max()), threshold) * 1.25 + 1e-9)
    ax.set_title("final KL per latent dim, sorted", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def mutual_information_heatmap(mi: np.ndarray, entropies: np.ndarray, factor_names: Sequence[str],
                               kl_per_dim: Sequence[float], threshold: float) -> bytes:
    """Code dims (rows, KL order) × factors: I(z_i; v_k) / H(v_k), each cell annotated with it."""
    kl = np.asarray(kl_per_dim, dtype=float)
    order = np.argsort(kl)[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(entropies[None, :] > 0, mi / entropies[None, :], 0.0)[order]  # (D, K)
    fig, ax = plt.subplots(figsize=(1.15 * len(factor_names) + 2.6, 0.42 * len(order) + 1.4))
    ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(factor_names)), factor_names, fontsize=8, rotation=20, ha="right")
    ax.set_yticks(range(len(order)), [dim_label(d, kl[d], threshold) for d in order], fontsize=8)
    for tick, d in zip(ax.get_yticklabels(), order):
        tick.set_color("0.55" if kl[d] < threshold else "black")
    for i in range(normalised.shape[0]):
        for k in range(normalised.shape[1]):
            value = normalised[i, k]
            ax.text(k, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.55 else "black")
    ax.set_title("I(z_i; factor) / H(factor)", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def _numeric(values: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(values).dtype, np.number)


def latent_vs_factor(summaries: Sequence[tuple[np.ndarray, np.ndarray]], factor_names: Sequence[str],
                     factor_values: Sequence[np.ndarray], dims: Sequence[int], kl_per_dim: Sequence[float],
                     threshold: float) -> bytes:
    """Rows: the given (active) dims; columns: factors; each panel the dim's mean code against the
    factor's value, with a ±1 standard deviation band. ``summaries`` comes from
    :func:`betavae.report.analysis.mean_code_by_factor`."""
    nrows, ncols = len(dims), len(factor_names)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols + 0.8, 1.55 * nrows + 0.7), squeeze=False,
                             sharey="row")
    for col, (name, values, (mean, std)) in enumerate(zip(factor_names, factor_values, summaries)):
        numeric = _numeric(values) and len(values) == mean.shape[1]
        x = np.asarray(values, dtype=float) if numeric else np.arange(mean.shape[1])
        for row, dim in enumerate(dims):
            ax = axes[row, col]
            ax.fill_between(x, mean[dim] - std[dim], mean[dim] + std[dim], color="tab:blue", alpha=0.18, lw=0)
            ax.plot(x, mean[dim], color="tab:blue", lw=1.3, marker="." if len(x) <= 12 else None)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if len(x) <= 8:  # few values (shape, scale): tick each one
                ax.set_xticks(x, [f"{v:g}" if numeric else str(v) for v in (x if numeric else values)], fontsize=7)
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"z{dim}\nKL {kl_per_dim[dim]:.2f}", fontsize=8)
    fig.suptitle("mean code (±1 s.d.) against each factor's value", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def tradeoff(weights: Sequence[float], reconstruction: Sequence[Sequence[float]], scores: Sequence[Sequence[float]],
             score_name: str, chosen: float | None, symbol: str = "β") -> bytes:
    """Left: the score and the reconstruction against the weight (mean line, a dot per seed).
    Right: the trade-off, score against reconstruction, a dot per trial and each weight's mean ± s.d.

    ``reconstruction[i]`` and ``scores[i]`` hold the values of the seeds of ``weights[i]`` (NaN where
    a trial has none); ``chosen`` is the recommended weight, marked.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = plt.cm.viridis(np.linspace(0.05, 0.9, len(weights)))
    x = np.arange(len(weights))
    recs = [np.asarray(r, dtype=float) for r in reconstruction]
    vals = [np.asarray(s, dtype=float) for s in scores]

    def mean(a: np.ndarray) -> float:
        return float(np.nanmean(a)) if np.any(np.isfinite(a)) else np.nan

    def std(a: np.ndarray) -> float:
        return float(np.nanstd(a)) if np.any(np.isfinite(a)) else np.nan

    rec_mean, score_mean = np.array([mean(r) for r in recs]), np.array([mean(s) for s in vals])
    twin = left.twinx()
    for i in range(len(weights)):
        left.scatter(np.full(len(vals[i]), x[i]), vals[i], color="tab:blue", s=14, alpha=0.5)
        twin.scatter(np.full(len(recs[i]), x[i]), recs[i], color="tab:orange", s=14, alpha=0.5, marker="s")
    left.plot(x, score_mean, color="tab:blue", marker="o")
    twin.plot(x, rec_mean, color="tab:orange", marker="s", ls="--")
    left.set_xticks(x, [f"{w:g}" + (" *" if w == chosen else "") for w in weights])
    left.set_xlabel(symbol + ("  (* recommended)" if chosen is not None else ""))
    left.set_ylabel(score_name, color="tab:blue")
    twin.set_ylabel("reconstruction NLL (nats / image)", color="tab:orange")
    left.set_title(f"{score_name} (blue) and reconstruction (orange) per {symbol}", fontsize=10)
    left.grid(alpha=0.3)
    for i, weight in enumerate(weights):
        right.scatter(recs[i], vals[i], color=colors[i], s=18, alpha=0.5)
        if np.isfinite(rec_mean[i]) and np.isfinite(score_mean[i]):
            is_chosen = weight == chosen
            right.errorbar(rec_mean[i], score_mean[i], xerr=std(recs[i]), yerr=std(vals[i]), color=colors[i],
                           marker="o", ms=8, capsize=3, mec="black" if is_chosen else colors[i], mew=2 if is_chosen else 1)
            right.annotate(f"{symbol}={weight:g}" + (" (recommended)" if is_chosen else ""), (rec_mean[i], score_mean[i]),
                           xytext=(6, 6), textcoords="offset points", fontsize=8,
                           fontweight="bold" if is_chosen else "normal")
    finite = np.isfinite(rec_mean) & np.isfinite(score_mean)
    right.plot(rec_mean[finite], score_mean[finite], color="0.6", lw=0.8, zorder=0)
    right.margins(0.15)  # room for the labels of the outermost points
    right.set_xlabel("reconstruction NLL (nats / image, lower is better)")
    right.set_ylabel(score_name)
    right.set_title(f"trade-off: mean ± s.d. over seeds per {symbol}; small dots: trials", fontsize=10)
    right.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)
