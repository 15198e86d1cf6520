"""``SWEEP/report.html``: the trade-off of a sweep over a regularisation weight (β for the β-VAE),
its trials, the recommended weight and why, and every trial's traversals side by side.

The sweep hands over its trials and its recommendation; this module only draws them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from betavae.errors import ConfigError
from betavae.training.rundir import FIGURES_DIR, REPORT_FILE, TRAVERSALS_FIGURE
from betavae.report.html import Section, empty, esc, figure, fmt_number, img_file, page, table, write_page
from betavae.sweep.outputs import TRADEOFF_FIGURE

#: Trial keys that describe a trial rather than measure its disentanglement (never taken as the score).
DESCRIPTIVE_KEYS = ("weight", "beta", "seed", "trial", "name", "state", "run_dir", "reconstruction", "kl", "active_dims",
                    "turn_degrees", "seconds", "error")
#: Trial keys too long or too internal for the table.
HIDDEN_KEYS = ("udr_codes", "udr_kl_per_dim", "metrics", "readback_floor")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _weight(trial: Mapping[str, Any]) -> Any:
    """The swept weight of a trial: ``weight``, or ``beta`` for a β sweep."""
    return trial.get("weight", trial.get("beta"))


def _measure(trial: Mapping[str, Any], key: str) -> float:
    """``trial[key]``, or ``trial["metrics"][key]``, as a float (NaN when absent or not finite)."""
    value = trial.get(key)
    if not _is_number(value):
        value = (trial.get("metrics") or {}).get(key)
    return float(value) if _is_number(value) else math.nan


def _score_key(trials: Sequence[Mapping[str, Any]], recommendation: Mapping[str, Any]) -> str | None:
    """The recommendation's ``metric`` when trials carry it, else the first measure a trial has."""
    named = recommendation.get("metric")
    if named and any(math.isfinite(_measure(t, str(named))) for t in trials):
        return str(named)
    for trial in trials:
        for key, value in {**trial, **(trial.get("metrics") or {})}.items():
            if key not in DESCRIPTIVE_KEYS and not key.startswith("reconstructed_factors.") and _is_number(value):
                return key  # the share of reconstructions showing a factor measures what they keep, not disentanglement
    return None


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return "" if value is None else value
    if isinstance(value, list) and all(_is_number(v) for v in value):
        text = " ".join(f"{v:.3g}" for v in value)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _shown_path(run_dir: Any, sweep_dir: Path) -> str:
    path = Path(str(run_dir))
    try:
        return str(path.resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        return str(path)


def _link(path: Path, sweep_dir: Path) -> str:
    """A link to ``path`` that works from ``sweep_dir/report.html``: relative inside the sweep, else a file URI."""
    try:
        return path.resolve().relative_to(sweep_dir.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_uri()


def sweep_report(sweep_dir: str | Path, trials: list[dict], recommendation: dict) -> Path:
    """Write ``sweep_dir/report.html`` and return its path.

    ``trials``: one dict per trial. Its swept weight is ``weight`` (or ``beta``); ``seed``,
    ``state``, ``run_dir`` (whose ``figures/traversals.png`` is shown), ``reconstruction`` (final
    reconstruction NLL, nats per image) and measures are used where present. Measures are read
    from the trial itself or from its ``metrics`` dict (``{"mig.mig": 0.3, "udr": 0.5}``); every
    other key is shown in the table as given.

    The trade-off section embeds ``sweep_dir/tradeoff.png``, the figure ``betavae sweep`` draws
    (:func:`betavae.sweep.outputs.plot_tradeoff`), and says so when it is missing.

    ``recommendation``: ``weight`` (or ``beta``; None when nothing could be recommended),
    ``reason`` (why, in words), ``metric`` (the measure the choice ranked by), optionally
    ``weight_name`` (its symbol, default β), ``higher_is_better`` and
    ``per_weight`` (per-weight means and spreads); other scalar keys are listed.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep directory {sweep_dir} does not exist.")
    for i, trial in enumerate(trials):
        if not isinstance(trial, Mapping) or not _is_number(_weight(trial)):
            raise ConfigError(f"trial {i} has no numeric 'weight' (or 'beta'): {trial!r:.200}.")
    trials = sorted(trials, key=lambda t: (float(_weight(t)), t["seed"] if _is_number(t.get("seed")) else 0))
    symbol = str(recommendation.get("weight_name") or "β")
    chosen = _weight(recommendation)
    chosen = float(chosen) if _is_number(chosen) else None
    score = _score_key(trials, recommendation)
    weights = sorted({float(_weight(t)) for t in trials})
    sections = [
        Section("recommendation", "Recommendation", _recommendation_section(recommendation, symbol, chosen)),
        Section("tradeoff", "Trade-off", _tradeoff_section(sweep_dir, score, symbol,
                                                           bool(recommendation.get("higher_is_better", True)))),
        Section("trials", "Trials", _trials_section(trials, sweep_dir, chosen)),
        Section("traversals", f"Traversals per {symbol}", _traversals_section(trials, weights, sweep_dir, score, symbol,
                                                                             chosen)),
    ]
    seeds = sorted({t["seed"] for t in trials if _is_number(t.get("seed"))})
    objective = recommendation.get("objective")
    intro = (f"<p>{len(trials)} trials{' of objective ' + esc(objective) if objective else ''}: "
             f"{esc(symbol)} ∈ {{{', '.join(f'{w:g}' for w in weights)}}}"
             + (f", seeds {esc(', '.join(map(str, seeds)))}" if seeds else "")
             + f". Sweep directory <code>{esc(sweep_dir.resolve())}</code>.</p>")
    return write_page(sweep_dir / REPORT_FILE, page(f"betavae sweep: {sweep_dir.name}", intro, sections))


def _recommendation_section(recommendation: Mapping[str, Any], symbol: str, chosen: float | None) -> str:
    reason = esc(recommendation.get("reason") or "")
    if chosen is None:
        body = empty(f"No {esc(symbol)} could be recommended. {reason}")
    else:
        body = f'<div class="recommendation"><h3>Recommended {esc(symbol)} = {chosen:g}</h3><p>{reason}</p></div>'
    extra = [(k, _cell(v)) for k, v in recommendation.items()
             if k not in ("weight", "beta", "reason", "per_weight", "weight_name") and not isinstance(v, (dict, list))]
    if extra:
        body += table(("setting", "value"), extra)
    per_weight = recommendation.get("per_weight")
    if isinstance(per_weight, list) and per_weight:
        body += "<h3>Per weight, over seeds</h3>" + _per_weight_table(per_weight, symbol, recommendation.get("metric"), chosen)
    return body


def _per_weight_table(rows: list[Any], symbol: str, metric: Any, chosen: float | None) -> str:
    """Mean ± s.d. of each aggregate in the recommendation's ``per_weight`` rows."""

    def spread(value: Any) -> str:
        if isinstance(value, Mapping) and _is_number(value.get("mean")):
            std = value.get("std")
            return f"{value['mean']:.4g}" + (f" ± {std:.2g}" if _is_number(std) else "")
        return "–"

    header = [symbol, "completed", "failed", "reconstruction", "KL", "active dims", str(metric or "metric")]
    table_rows, marked = [], []
    for i, row in enumerate(r for r in rows if isinstance(r, Mapping)):
        weight = _weight(row)
        table_rows.append([weight if _is_number(weight) else "", row.get("completed", ""), row.get("failed", ""),
                           spread(row.get("reconstruction")), spread(row.get("kl")), spread(row.get("active_dims")),
                           spread(row.get("metric"))])
        if chosen is not None and _is_number(weight) and float(weight) == chosen:
            marked.append(i)
    return table(header, table_rows, highlight=marked)


def _tradeoff_section(sweep_dir: Path, score: str | None, symbol: str, higher_is_better: bool) -> str:
    if score is None:
        return empty("No trial carries a disentanglement measure yet, so there is no trade-off to draw.")
    path = sweep_dir / TRADEOFF_FIGURE
    if not path.is_file():
        return empty(f"No <code>{esc(TRADEOFF_FIGURE)}</code> in this sweep directory: <code>betavae sweep</code> "
                     "draws it before it writes this report; run the sweep's command again to draw it.")
    better = "higher" if higher_is_better else "lower"
    return figure(img_file(path, f"{score} and reconstruction against {symbol}", "tradeoff"),
                  f"<code>{esc(TRADEOFF_FIGURE)}</code>. A larger {esc(symbol)} presses the code toward independent "
                  f"factors and costs reconstruction. Top: reconstruction NLL (lower is better) against each measure "
                  f"({better} is better for <code>{esc(score)}</code>), a dot per trial, each {esc(symbol)}'s mean "
                  f"± one standard deviation over seeds, the recommended {esc(symbol)} ringed. Bottom: each measure "
                  f"against {esc(symbol)}. Trials that did not finish are left out.")


def _trials_section(trials: Sequence[Mapping[str, Any]], sweep_dir: Path, chosen: float | None) -> str:
    columns: list[str] = []
    for t in trials:
        columns += [k for k in t if k not in columns and k not in HIDDEN_KEYS]
    metric_names: list[str] = []
    for t in trials:
        metric_names += [k for k in (t.get("metrics") or {}) if k not in metric_names]
    rows = []
    for t in trials:
        row = [_shown_path(t[c], sweep_dir) if c == "run_dir" and t.get(c) else _cell(t.get(c)) for c in columns]
        row += [_cell((t.get("metrics") or {}).get(m)) for m in metric_names]
        rows.append(row)
    marked = [i for i, t in enumerate(trials) if chosen is not None and float(_weight(t)) == chosen]
    return (table(columns + metric_names, rows, highlight=marked)
            + '<p class="caption">Rows of the recommended weight are highlighted.</p>')


def _traversals_section(trials: Sequence[Mapping[str, Any]], weights: list[float], sweep_dir: Path, score: str | None,
                        symbol: str, chosen: float | None) -> str:
    cards = []
    for weight in weights:
        thumbs = []
        for t in (t for t in trials if float(_weight(t)) == weight):
            label = f"seed {t['seed']}" if "seed" in t else "trial"
            if score and math.isfinite(_measure(t, score)):
                label += f", {score} {fmt_number(_measure(t, score))}"
            path = None
            if t.get("run_dir"):
                path = Path(str(t["run_dir"])) / FIGURES_DIR / TRAVERSALS_FIGURE
                if not path.is_absolute() and not path.exists():
                    path = sweep_dir / path
            if path is not None and path.is_file():
                report = path.parent.parent / REPORT_FILE
                link = (f' · <a href="{esc(_link(report, sweep_dir))}">report of this run</a>' if report.is_file() else "")
                thumbs.append(figure(img_file(path, f"traversals, {symbol} = {weight:g}, {label}", "traversal_thumbnail",
                                              width=320), esc(label) + link))
            else:
                state = f" ({t['state']})" if t.get("state") else ""
                thumbs.append(f'<p class="note">{esc(label)}{esc(state)}: no traversals.png</p>')
        css = "card highlight" if weight == chosen else "card"
        title = f"{symbol} = {weight:g}" + (" (recommended)" if weight == chosen else "")
        cards.append(f'<div class="{css}"><h3>{esc(title)}</h3>{"".join(thumbs)}</div>')
    return (f"<p class=\"caption\">Each trial's latent traversals (one row per dim, sorted by KL, swept from −3 to 3). "
            f"Look for rows that each change one thing, and for how many rows go blank (collapsed) as {esc(symbol)} "
            f"grows.</p><div class=\"cards\">{''.join(cards)}</div>")
