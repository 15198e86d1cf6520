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
