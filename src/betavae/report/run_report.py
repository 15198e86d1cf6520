"""``RUN/report.html``: what a run learned, in one self-contained page (see docs/report.md).

Sections, by anchor: ``config``, ``diagnosis``, ``curves``, ``kl``, ``reconstructions``,
``samples``, ``traversals``, ``metrics``; ``reference`` beside a shipped reference model; ``tradeoff``
when betavae ships the dSprites β trade-off study (``betavae.reference.study``); with ground-truth
factors also ``mutual-information`` and ``latent-factor``. A section whose inputs do not exist yet (no
evaluation, an unfinished run, data that moved) says so and how to get it, instead of failing the report.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from betavae import reference
from betavae.checks import check_data_fits_model, check_seed
from betavae.data import dataset_from_config
from betavae.data.base import FactorDataset, ImageDataset
from betavae.data.dsprites import DSprites
from betavae.errors import BetaVAEError
from betavae.metrics.utils import NUM_BINS
from betavae.models.vae import VAE
from betavae.objectives import OBJECTIVES
from betavae.report import charts
from betavae.report.analysis import MI_IMAGES, code_factor_information, mean_code_by_factor, rotation_sentence
from betavae.report.figures import diagnosis_problem, drawable_episodes, make_figures, plot_training_curves
from betavae.report.html import Section, empty, esc, figure, fmt_number, img, img_file, page, table, write_page
from betavae.training import load, rundir
from betavae.training.config import TrainConfig
from betavae.training.diagnostics import run_episodes
from betavae.training.loop import behind_checkpoint, behind_checkpoint_note
from betavae.training.logging import read_metrics
from betavae.training.rundir import (DIAGNOSIS_FILE, EVALUATION_FILE, FIGURE_FILES, FIGURES_DIR, RECONSTRUCTIONS_FIGURE,
                                     REPORT_FILE, SAMPLES_FIGURE, TRAINING_CURVES_FIGURE, TRAVERSALS_ANIMATION,
                                     TRAVERSALS_FIGURE, refuse_writes)
#: Logged keys drawn in the main curves figure, or shown elsewhere (throughput, time; Adam's learning
#: rate is stated in the "Optimisation" row).
MAIN_CURVE_KEYS = ("step", "reconstruction", "kl", "weighted_regulariser", "kl_per_dim", "images_per_second",
                   "elapsed_seconds", "lr")
#: Logged by every objective (the rest of a record's numeric keys are the objective's own terms).
SHARED_TERMS = ("elbo", "loss", "active_dims")


def run_report(run_dir: str | Path, model: VAE | None = None, dataset: ImageDataset | None = None, *,
               seed: int = 0, mi_images: int = MI_IMAGES, reference: str | None = None) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    ``model`` and ``dataset`` default to the run's final model and its training data; figures that
    are missing from ``RUN/figures`` are drawn first. ``seed`` picks the images shown and those
    encoded (``mi_images`` of them) for the factor sections. ``reference`` names a shipped
    reference model (``betavae.reference``) shown beside the run: metrics side by side, its traversals.
    """
    check_seed(seed)
    run_dir = Path(run_dir)
    refuse_writes(run_dir, "write a report for")
    config = TrainConfig.load(run_dir)
    with rundir.lock(run_dir):  # refused while the run trains elsewhere; shared with this thread's training
        return _write_report(run_dir, config, model, dataset, seed, mi_images, reference)


def _write_report(run_dir: Path, config: TrainConfig, model: VAE | None, dataset: ImageDataset | None, seed: int,
                  mi_images: int, reference: str | None) -> Path:
    history = read_metrics(run_dir)
    diagnosis = _read_json(run_dir / DIAGNOSIS_FILE)
    problems: list[str] = []  # why model-based sections are missing
    if model is None:
        try:
            model = load(run_dir)
        except BetaVAEError as exc:
            problems.append(f"the final model cannot be loaded: {exc}")
    if dataset is None and model is not None:
        try:
            dataset = dataset_from_config(config)
        except BetaVAEError as exc:
            problems.append(f"the training data cannot be read: {exc}")
    if model is not None:
        model.eval()
        if dataset is not None:
            check_data_fits_model(dataset, model, run_dir)  # before any figure is drawn
    figures_dir = run_dir / FIGURES_DIR
    if (model is not None and dataset is not None and history and diagnosis
            and not all((figures_dir / name).is_file() for name in FIGURE_FILES)):
        damaged = diagnosis_problem(diagnosis, model.latents)
        if damaged is None:
            make_figures(run_dir, model, dataset, history, diagnosis, seed=seed)
        else:
            problems.append(f"{DIAGNOSIS_FILE} is damaged ({damaged}); resume the run to write it again")
    kl_per_dim = diagnosis["kl_per_dim"] if diagnosis else (history[-1]["kl_per_dim"] if history else None)
    why_missing = "; ".join(problems) or (
        "the run has no figures yet: finish or resume it (<code>betavae train --resume RUN</code>), "
        "then run <code>betavae report RUN</code>."
    )

    sections = [
        Section("config", "Configuration", _config_section(config, dataset, history, diagnosis)),
        Section("diagnosis", "Diagnosis", _diagnosis_section(diagnosis, history)),
        Section("curves", "Training curves", _curves_section(
            history, figures_dir, config.collapse_threshold, run_episodes_of(diagnosis, history) if diagnosis else None)),
        Section("kl", "KL per latent dim", _kl_section(kl_per_dim, config.collapse_threshold)),
        Section("reconstructions", "Reconstructions", _figure_or_note(
            figures_dir / RECONSTRUCTIONS_FIGURE, "reconstructions", why_missing,
            "Top row: images of the training data; bottom row: their reconstructions, decoded from the "
            "posterior mean. Blurry or missing details show what the code leaves out.", pixelated=True, width=900)
            + _readback_part(run_dir)),
        Section("samples", "Samples of the prior", _figure_or_note(
            figures_dir / SAMPLES_FIGURE, "samples", why_missing,
            "Images decoded from 64 draws of the prior N(0, I). Good samples mean the posteriors cover the "
            "prior; implausible ones, holes in the code space.", pixelated=True, width=560)),
        Section("traversals", "Latent traversals", _traversals_section(figures_dir, why_missing)),
        Section("metrics", "Disentanglement metrics", _metrics_section(run_dir, dataset)),
    ]
    if reference is not None:
        sections.append(Section("reference", "Beside a well-trained model", _reference_section(run_dir, reference)))
    tradeoff = _tradeoff_section(run_dir, config, dataset, diagnosis)
    if tradeoff is not None:
        sections.append(Section("tradeoff", "The β trade-off on dSprites", tradeoff))
    if isinstance(dataset, FactorDataset) and model is not None and kl_per_dim is not None:
        sections += _factor_sections(model, dataset, kl_per_dim, config.collapse_threshold, seed, mi_images)
    document = page(f"betavae report: {run_dir.name}", _intro(config, run_dir, dataset, diagnosis), sections)
    return write_page(run_dir / REPORT_FILE, document)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _objective_words(name: str) -> str:
    """The objective's title where it has one, and the flag that selects it."""
    title = getattr(OBJECTIVES.get(name), "title", None)
    flag = f"<code>--objective {esc(name)}</code>"
    return f"{esc(title)} ({flag})" if title else f"objective {flag}"


def _data_words(config: TrainConfig, dataset: ImageDataset | None) -> str:
    if dataset is None:
        return esc(config.data or config.dataset)
    c, h, w = dataset.image_shape
    words = f"{esc(getattr(dataset, 'name', config.data or config.dataset))}: {len(dataset):,} images of {c}×{h}×{w}"
    if isinstance(dataset, FactorDataset):
        factors = ", ".join(f"{esc(n)} ({s})" for n, s in zip(dataset.factor_names, dataset.factor_sizes))
        words += f", ground-truth factors {factors}"
    else:
        words += ", no factor labels"
    return words


def _intro(config: TrainConfig, run_dir: Path, dataset: ImageDataset | None, diagnosis: dict[str, Any] | None) -> str:
    weight = f" ({esc(diagnosis['weight'])})" if diagnosis and diagnosis.get("weight") else ""
    behind = behind_checkpoint(run_dir)
    trained = f"{config.steps:,} steps" if behind is None else f"{behind[0]:,} of its {config.steps:,} steps"
    text = (f"{_objective_words(config.objective)}{weight} with {config.latents} latent dims, trained for "
            f"{trained} on {_data_words(config, dataset)}.")
    if diagnosis:
        text += (f" At step {diagnosis['step']:,}: reconstruction {diagnosis['reconstruction']:.4g} nats per image, "
                 f"KL {diagnosis['kl']:.3g} nats, {len(diagnosis['active_dims'])} of {len(diagnosis['kl_per_dim'])} "
                 "dims active.")
    warning = f'<p class="note">{esc(behind_checkpoint_note(run_dir, behind))}</p>' if behind else ""
    return f"<p>{text}</p>{warning}<p>Run directory <code>{esc(run_dir.resolve())}</code>.</p>"


def _config_section(config: TrainConfig, dataset: ImageDataset | None, history: list[dict[str, Any]],
                    diagnosis: dict[str, Any] | None) -> str:
    weight = diagnosis["weight"] if diagnosis and diagnosis.get("weight") else None
    likelihood = config.likelihood + (f" (scale {config.likelihood_scale:g})" if config.likelihood != "bernoulli" else "")
    items = [
        ("Objective", _objective_words(config.objective) + (f", {esc(weight)}" if weight else "")),
        ("Data", _data_words(config, dataset)),
        ("Model", f"{esc(config.arch)} encoder and decoder, {config.latents} latent dims, {esc(likelihood)} likelihood"),
        ("Optimisation", f"{config.steps:,} steps of {config.batch_size} images, Adam, learning rate {config.lr:g}"
                         + _decay_words(config)
                         + f", seed {config.seed}"),
    ]
    if history:
        last = history[-1]
        if "elapsed_seconds" in last:
            items.append(("Time", f"{last['elapsed_seconds']:.0f} s of training"
                                  + (f", {last['images_per_second']:,.0f} images/s at the end"
                                     if "images_per_second" in last else "")))
    listing = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in items)
    full = table(("field", "value"), [(k, "" if v is None else v) for k, v in config.to_dict().items()])
    return (f"<table>{listing}</table><details><summary>every setting (config.json)</summary>{full}</details>")


def _findings_list(findings: list[dict[str, Any]]) -> str:
    return '<ul class="findings">' + "".join(
        f'<li class="{esc(f.get("level", "info"))}"><span class="level">{esc(f.get("level", ""))}</span>'
        f'{esc(f.get("text", ""))}</li>' for f in findings) + "</ul>"


def run_episodes_of(diagnosis: dict[str, Any], history: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The run's episodes (KL collapse, KL high, dims collapsed), replayed from its logged records with the
    diagnosis's settings, so a run diagnosed before episodes were recorded gets them too; None if unknown."""
    if not history:
        return _recorded_episodes(diagnosis)
    try:
        size = int(diagnosis.get("dataset_size") or round(math.exp(diagnosis["kl_ceiling_log_n"])))
        return run_episodes(history, diagnosis.get("weight", ""), diagnosis["collapse_threshold"],
                            diagnosis["baseline_reconstruction"], size,
                            kl_high_advice=diagnosis.get("kl_high_advice") or None)
    except (KeyError, TypeError, ValueError, OverflowError):
        return _recorded_episodes(diagnosis)


def _recorded_episodes(diagnosis: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The episodes ``diagnosis.json`` lists, or None where it lists none that can be shown (a damaged file)."""
    episodes = diagnosis.get("episodes")
    return episodes if drawable_episodes(episodes) else None


def _diagnosis_section(diagnosis: dict[str, Any] | None, history: list[dict[str, Any]]) -> str:
    if not diagnosis:
        return empty("No diagnosis yet: it is written when training finishes. Finish or resume the run "
                     "(<code>betavae train --resume RUN</code>).")
    findings = _findings_list(diagnosis.get("findings", []))
    episodes = run_episodes_of(diagnosis, history)
    over_run = ""
    if episodes is not None:  # None: neither logged records nor a diagnosis that lists episodes
        over_run = "<h3>Over the whole run</h3>" + (
            _findings_list(episodes) if episodes else
            '<p class="note">No KL collapse, no KL above log N, and no latent dim collapsed after being active, at '
            "any logged step.</p>") + (
            '<p class="caption">From every record of <code>metrics.jsonl</code>: an episode starts or ends when two '
            "consecutive logged steps agree; training printed each start and end at the step it was seen.</p>")
    gain = diagnosis.get("reconstruction_gain")
    rows = [
        ("reconstruction NLL (nats / image)", diagnosis["reconstruction"]),
        ("the same for a decoder that ignores z", diagnosis.get("baseline_reconstruction", float("nan"))),
        ("improvement over ignoring z", f"{100 * gain:.0f}%" if isinstance(gain, (int, float)) else "–"),
        ("KL (nats)", diagnosis["kl"]),
        ("log N (the most information the data holds, nats)", diagnosis.get("kl_ceiling_log_n", float("nan"))),
        ("active dims", ", ".join(f"z{d}" for d in diagnosis.get("active_dims", [])) or "none"),
        ("collapsed dims", ", ".join(f"z{d}" for d in diagnosis.get("collapsed_dims", [])) or "none"),
    ]
    return (f'{findings}'
            f'<p class="caption">From the last logged step ({diagnosis["step"]:,}); a dim is collapsed when its KL is '
            f'below {diagnosis.get("collapse_threshold", 0):g} nats.</p>' + table(("measure", "value"), rows) + over_run)


def _curves_section(history: list[dict[str, Any]], figures_dir: Path, threshold: float,
                    episodes: list[dict[str, Any]] | None = None) -> str:
    if not history:
        return empty("No logged training terms yet (<code>metrics.jsonl</code> is empty): the run has not reached its "
                     "first logging step.")
    main = figures_dir / TRAINING_CURVES_FIGURE
    if main.is_file():
        main_img = img_file(main, "reconstruction, KL, β·KL and KL per dim against step", "training_curves")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            plot_training_curves(history, Path(tmp) / "curves.png", threshold, episodes=episodes)
            main_img = img_file(Path(tmp) / "curves.png", "reconstruction, KL, β·KL and KL per dim against step",
                                "training_curves")
    numeric = [k for k, v in history[-1].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    shared = [k for k in SHARED_TERMS if k in numeric]
    own = [k for k in numeric if k not in MAIN_CURVE_KEYS and k not in SHARED_TERMS]
    parts = [figure(main_img, "Left: reconstruction NLL. Middle: KL(q(z|x) ‖ p(z)) unweighted and the weighted "
                              "regulariser (β·KL for the β-VAE); shaded spans are steps where the KL had collapsed "
                              "(red) or stayed above log N (purple). Right: the KL of each latent dim; dotted lines "
                              "are dims that end collapsed.")]
    if shared:
        parts.append(figure(img(charts.term_curves(history, shared), "image/png", "ELBO, loss and active dims", "elbo_curves"),
                            "The ELBO (−reconstruction − KL, a lower bound on log p(x)), the loss the optimiser "
                            "minimised, and the number of active dims."))
    constant = [k for k in own if len({r.get(k) for r in history}) == 1]
    varying = [k for k in own if k not in constant]
    if own:
        parts.append("<h3>Terms of this objective</h3>")
    if varying:
        parts.append(figure(img(charts.term_curves(history, varying), "image/png", "objective-specific terms",
                                "objective_terms"),
                            "The objective's own logged terms: " + ", ".join(f"<code>{esc(k)}</code>" for k in varying) + "."))
    if constant:
        parts.append('<p class="note">Constant through the run: '
                     + ", ".join(f"<code>{esc(k)}</code> = {esc(fmt_number(history[-1][k]))}" for k in constant) + ".</p>")
    if not own:
        parts.append('<p class="note">This objective logs no terms of its own.</p>')
    return "".join(parts)


def _kl_section(kl_per_dim: list[float] | None, threshold: float) -> str:
    if not kl_per_dim:
        return empty("No KL logged yet.")
    return figure(img(charts.kl_bars(kl_per_dim, threshold), "image/png", "final KL per latent dim", "kl_bars"),
                  f"KL of each latent dim at the end of training, largest first. Grey hatched bars are collapsed "
                  f"(KL below {threshold:g} nats): they carry no information about the input, and the decoder ignores them.")


def _figure_or_note(path: Path, name: str, why_missing: str, caption: str, pixelated: bool = False,
                    width: int | None = None) -> str:
    if not path.is_file():
        return empty(f"No {esc(path.name)}: {why_missing}")
    return figure(img_file(path, name, name, pixelated=pixelated, width=_fit(path, width)), caption)


def _fit(path: Path, width: int | None) -> int | None:
    """``width``, or the image's own width when it is narrower (small images are not blown up)."""
    if width is None:
        return None
    with Image.open(path) as image:
        return min(width, image.width)


def _traversals_section(figures_dir: Path, why_missing: str) -> str:
    gif, grid = figures_dir / TRAVERSALS_ANIMATION, figures_dir / TRAVERSALS_FIGURE
    if not gif.is_file() and not grid.is_file():
        return empty(f"No traversals: {why_missing}")
    parts = ['<p class="caption">Each latent dim swept from −3 to 3 with the others held at one image\'s code, '
             "dims in order of KL. A dim that changes one thing (position, size, rotation, shape) and nothing else is "
             "disentangled; a collapsed dim changes nothing.</p>"]
    if gif.is_file():
        with Image.open(gif) as image:  # small tiles: shown at twice their size
            gif_width = min(2 * image.width, 900)
        parts.append(figure(img_file(gif, "animated traversal of every dim", "traversals_gif", pixelated=True,
                                     width=gif_width),
                            "Animated: every dim (one tile each, KL order) moved together from −3 to 3 and back."))
    if grid.is_file():
        parts.append(figure(img_file(grid, "traversal grid, one row per dim", "traversals_grid"),
                            "Grid: one row per dim, sorted by KL (nats, left)."))
    return "".join(parts)


def _metrics_section(run_dir: Path, dataset: ImageDataset | None) -> str:
    no_factors = ("" if dataset is None or isinstance(dataset, FactorDataset) else
                  '<p class="note">This data has no factor labels, so only unsupervised measures apply; label your '
                  "images with <code>--factors labels.csv</code> to get the supervised metrics, the mutual-information "
                  "heatmap and the latent-vs-factor plots.</p>")
    path = run_dir / EVALUATION_FILE
    if not path.is_file():
        return empty(f"No evaluation yet: run <code>betavae evaluate {esc(run_dir)}</code>, then "
                     f"<code>betavae report {esc(run_dir)}</code>.") + no_factors
    record = _read_json(path)
    try:
        rows = [(metric if i == 0 else "", measure, float(value)) for metric, entry in record["metrics"].items()
                for i, (measure, value) in enumerate(entry["values"].items())]  # each metric named once
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        return empty(f"{esc(path)} could not be read ({esc(type(exc).__name__)}: {esc(exc)}); evaluate again with "
                     f"<code>betavae evaluate {esc(run_dir)}</code>.") + no_factors
    details = [f"{k.replace('_', ' ')} {fmt_number(record[k])}" for k in ("seed", "representation", "images_encoded")
               if k in record]
    caption = (f'<p class="caption">From <code>evaluation.json</code>{": " + esc(", ".join(details)) if details else ""}. '
               "Each metric's sample counts and parameters are in that file; docs/metrics.md defines them.</p>")
    return table(("metric", "measure", "value"), rows) + caption + no_factors


def _readback_rows(record: dict[str, Any] | None) -> dict[str, dict[str, Any]] | None:
    """``reconstructed_factors`` of an evaluation record by factor name; None when it has none (or it is damaged)."""
    try:
        rows = (record or {}).get("reconstructed_factors")
        return {str(r["factor"]): {"accuracy": float(r["accuracy"]), "floor": float(r["floor"]), "values": int(r["values"])}
                for r in rows} if rows else None
    except (TypeError, KeyError, AttributeError, ValueError):
        return None


def _readback_part(run_dir: Path) -> str:
    """The table of factors the reconstructions show (``reconstructed_factors`` of the evaluation), or a pointer."""
    record = _read_json(run_dir / EVALUATION_FILE)
    rows = _readback_rows(record)
    if rows is None:
        if record is not None and "reconstructed_factors" in record:
            return empty(f"The read-back of the factors in {esc(EVALUATION_FILE)} could not be read; evaluate again with "
                         f"<code>betavae evaluate {esc(run_dir)}</code>.")
        return ""
    body = [(factor, f"{100 * r['accuracy']:.1f}%", f"{100 * r['floor']:.1f}%", r["values"]) for factor, r in rows.items()]
    return (table(("factor", "reconstructions that show it", "floor", "values"), body)
            + '<p class="caption">Which factors the reconstructions show, read back from them: a reconstruction shows a '
              "factor when it is nearer (in squared error) to its input than to every image that differs from the input "
              "in that factor alone: a heart drawn as a rounded blob still shows its shape if the blob is nearer the "
              "heart than the square and the ellipse at the same place, scale and orientation. Floor: the same with the "
              "mean image in place of every reconstruction, a decoder that ignores the code. From "
              "<code>evaluation.json</code> (docs/metrics.md).</p>")


def _reference_section(run_dir: Path, name: str) -> str:
    try:
        meta, theirs = reference.info(name), reference.evaluation(name)
    except BetaVAEError as exc:
        return empty(f"The reference model cannot be shown: {esc(exc)}")
    ours_record = _read_json(run_dir / EVALUATION_FILE)
    ours = reference.summary_values(ours_record) if ours_record else {}
    theirs_values = reference.summary_values(theirs)
    rows = [(label, ours.get(label, "not evaluated"), value) for label, value in theirs_values.items()]
    steps = meta.get("steps")
    parts = [
        f"<p>The shipped reference model <code>{esc(name)}</code>: {esc(meta.get('summary', ''))}. "
        f"It trained {fmt_number(steps)} steps ({fmt_number(meta.get('train_minutes'))} minutes on "
        f"{esc(meta.get('hardware', 'a CPU'))}); this run's metrics beside its metrics (same protocol; the reference's "
        "come from the full suite in its <code>evaluation.json</code>).</p>",
        table(("measure", "this run", "reference"), rows),
    ]
    ours_readback, theirs_readback = _readback_rows(ours_record), _readback_rows(theirs)
    if ours_readback and theirs_readback:
        shared = [f for f in theirs_readback if f in ours_readback]
        parts.append(table(("factor", "this run's reconstructions show it", "the reference's"),
                           [(f, f"{100 * ours_readback[f]['accuracy']:.1f}%", f"{100 * theirs_readback[f]['accuracy']:.1f}%")
                            for f in shared]))
    grid = reference.path(name) / FIGURES_DIR / TRAVERSALS_FIGURE
    if grid.is_file():
        parts.append(figure(img_file(grid, "reference model's traversal grid", "reference_traversals"),
                            "The reference model's traversals, one row per dim sorted by KL: position, scale and "
                            "(partly) shape or orientation each move in a dim of their own."))
    drawn = reference.path(name) / FIGURES_DIR / RECONSTRUCTIONS_FIGURE
    if drawn.is_file():
        parts.append(figure(img_file(drawn, "reference model's reconstructions", "reference_reconstructions",
                                     pixelated=True, width=900),
                            "The reference model's reconstructions, inputs over outputs: what of the shapes it draws, "
                            "to hold beside this run's reconstructions above."))
    parts.append(f'<p class="caption">Reproduce it: <code>{esc(meta.get("command", ""))}</code></p>')
    return "".join(parts)


def _tradeoff_section(run_dir: Path, config: TrainConfig, dataset: ImageDataset | None,
                      diagnosis: dict[str, Any] | None) -> str | None:
    """The shipped dSprites trade-off study: its per-weight table, its figure, the recommended β and, for a
    run of the study's objective on dSprites, where this run's β sits. None when no study is shipped."""
    try:
        study = reference.study(reference.TRADEOFF_STUDY)
    except BetaVAEError as exc:
        return empty(f"The shipped trade-off study cannot be shown: {esc(exc)}")
    if study is None:
        return None
    symbol, chosen, info = study.weight_name, study.recommended, study.info
    header, rows, chosen_row = reference.study_table(study)
    weights = [float(row["weight"]) for row in study.per_weight]
    objective = study.recommendation.get("objective", "beta")
    on_dsprites = isinstance(dataset, DSprites) or (not config.data and config.dataset == "dsprites")
    weight = getattr(config, str(study.recommendation.get("weight_field", "beta")), None)
    ours = float(weight) if config.objective == objective and on_dsprites and isinstance(weight, (int, float)) else None

    notes = [("recommended" if w == chosen else "") for w in weights]
    if ours is not None and ours in weights:
        notes[weights.index(ours)] = " and ".join(filter(None, [notes[weights.index(ours)], "this run's β"]))
    cells = [row + [note] for row, note in zip(rows, notes)]
    marked = [i for i, w in enumerate(weights) if w == ours] or ([chosen_row] if chosen_row is not None else [])
    if ours is not None:
        cells.append([f"this run: {symbol} = {ours:g}", f"seed {config.seed}"] + _run_values(run_dir, diagnosis) + [""])
    seeds = len(info.get("seeds", [])) or max((len(row.get("seeds", [])) for row in study.per_weight), default=0)
    parts = [
        f"<p>A sweep shipped with betavae trained {len(weights)} values of {esc(symbol)} × {seeds} seeds on dSprites and "
        f"evaluated every run; each row is one {esc(symbol)}, mean ± standard deviation over its seeds. A larger "
        f"{esc(symbol)} presses the code toward independent factors and costs reconstruction.</p>",
        table(header + [""], cells, highlight=marked),
    ]
    if chosen is not None:
        parts.append(f'<div class="recommendation"><h3>Recommended {esc(symbol)} = {chosen:g}</h3>'
                     f"<p>{esc(study.recommendation.get('reason', ''))}</p></div>")
    else:
        parts.append(empty(f"The study recommends no {esc(symbol)}: {esc(study.recommendation.get('reason', ''))}"))
    if ours is not None:
        parts.append(f"<p>{esc(_where_it_sits(ours, weights, chosen, symbol))} The study's runs were trained with "
                     f"<code>{esc(info.get('command', ''))}</code>; a run trained with other settings (steps, network, "
                     "learning rate) sits elsewhere on the curve.</p>")
    if study.figure is not None:
        parts.append(figure(img_file(study.figure, f"the study's reconstruction against MIG and the FactorVAE score, "
                                                   f"per {symbol}", "study_tradeoff", width=_fit(study.figure, 1100)),
                            f"The study's <code>tradeoff.png</code>, drawn by <code>betavae sweep</code>: top, the "
                            f"reconstruction NLL against each metric, one dot per run coloured by {esc(symbol)}, each "
                            f"{esc(symbol)}'s mean with ±1 standard deviation bars, the means joined in {esc(symbol)} "
                            f"order and the recommended {esc(symbol)} ringed; bottom, each measure against {esc(symbol)}."))
    parts.append(f'<p class="caption">From {esc(info.get("minutes", "?"))} minutes on {esc(info.get("hardware", "?"))}, '
                 f'{esc(info.get("date", "?"))}; the files are in <code>{esc(study.path)}</code>.</p>')
    return "".join(parts)


def _run_values(run_dir: Path, diagnosis: dict[str, Any] | None) -> list[Any]:
    """This run's reconstruction NLL (the last logged value, as a sweep records it), MIG, FactorVAE score and
    share of reconstructions that show the shape, in the order of :data:`betavae.reference.STUDY_COLUMNS`;
    "not evaluated" where the run has none."""
    record = _read_json(run_dir / EVALUATION_FILE)
    values = {"reconstruction": diagnosis.get("reconstruction") if diagnosis else None}
    for metric, entry in ((record or {}).get("metrics") or {}).items():
        for measure, value in (entry.get("values") or {}).items() if isinstance(entry, dict) else ():
            values[f"{metric}.{measure}"] = value
    for row in (record or {}).get("reconstructed_factors") or []:
        if isinstance(row, dict) and "factor" in row:
            values[f"reconstructed_factors.{row['factor']}"] = row.get("accuracy")
    cells: list[Any] = []
    for _, key in reference.STUDY_COLUMNS:
        value = values.get(key)
        cells.append(reference.study_value(key, value) if isinstance(value, (int, float))
                     else "not trained yet" if key == "reconstruction" else "not evaluated")
    return cells


def _decay_words(config: TrainConfig) -> str:
    """How the learning rate falls, in words (empty for a constant one)."""
    if config.lr_schedule != "cosine":
        return ""
    if config.lr_decay_fraction == 1:
        return " with cosine decay to 0"
    return f" held for the first {1 - config.lr_decay_fraction:.0%} of the steps, then cosine decay to 0"


def _where_it_sits(ours: float, weights: list[float], chosen: float | None, symbol: str) -> str:
    """Where ``ours`` falls among the study's ``weights``, and beside its recommended one, in words."""
    if ours in weights:
        place = f"This run's {symbol} = {ours:g} is one of the study's (its row is highlighted)"
    elif ours < weights[0]:
        place = f"This run's {symbol} = {ours:g} is below the smallest the study trained ({weights[0]:g})"
    elif ours > weights[-1]:
        place = f"This run's {symbol} = {ours:g} is above the largest the study trained ({weights[-1]:g})"
    else:
        below = max(w for w in weights if w < ours)
        above = min(w for w in weights if w > ours)
        place = f"This run's {symbol} = {ours:g} lies between the study's {symbol} = {below:g} and {symbol} = {above:g}"
    if chosen is None:
        return place + "."
    relation = "the recommended one" if ours == chosen else (
        f"{'below' if ours < chosen else 'above'} the recommended {symbol} = {chosen:g}")
    return f"{place}, {relation}."


def _factor_sections(model: VAE, dataset: FactorDataset, kl_per_dim: list[float], threshold: float, seed: int,
                     n: int) -> list[Section]:
    found = code_factor_information(model, dataset, n, seed)
    codes, factors, varying, names, mi, entropies = (found.codes, found.factors, found.varying, found.names, found.mi,
                                                     found.entropies)
    left_out = [dataset.factor_names[k] for k in range(len(dataset.factor_sizes)) if k not in varying]
    left_out_note = (f" Factors with one value in the sample ({esc(', '.join(left_out))}) are left out." if left_out else "")
    heatmap = figure(
        img(charts.mutual_information_heatmap(mi, entropies, names, kl_per_dim, threshold), "image/png",
            "mutual information between code dims and factors", "mutual_information"),
        f"Mutual information between each code dim (rows, by KL) and each factor (columns), as a fraction of the "
        f"factor's entropy, from the posterior means of {n:,} images drawn at random. Each dim's values are cut into "
        f"{NUM_BINS} equal-width bins and the plug-in estimate of the joint histogram is used (the MIG protocol). In a "
        f"disentangled code each factor's column has one dark cell, each in its own row. Values of a few hundredths "
        f"are the estimator's upward bias on a finite sample, not information.{left_out_note}")
    heatmap += _rotations_note(found.rotated_pairs())
    order = np.argsort(kl_per_dim)[::-1]
    active = [int(d) for d in order if kl_per_dim[d] >= threshold]
    if not active:
        latent = empty("Every latent dim collapsed, so no code varies with any factor.")
    else:
        summaries = mean_code_by_factor(codes, factors[:, varying], tuple(dataset.factor_sizes[k] for k in varying))
        values = [np.asarray(dataset.factor_values[k]) for k in varying]
        latent = figure(
            img(charts.latent_vs_factor(summaries, names, values, active, kl_per_dim, threshold), "image/png",
                "mean code of each active dim against each factor", "latent_vs_factor"),
            f"One row per active dim (by KL), one column per factor: the dim's mean code over the sampled images with "
            f"each value of the factor, with a ±1 standard deviation band. A dim that encodes one factor rises or falls "
            f"along that column and stays flat in the others.{left_out_note}")
    return [Section("mutual-information", "Code–factor mutual information", heatmap),
            Section("latent-factor", "Latents against factors", latent)]


def _rotations_note(pairs: list[dict]) -> str:
    """What :func:`rotated_pairs` found, with why it happens and what turns such a pair onto the axes."""
    if not pairs:
        return ""
    found = "; ".join(esc(rotation_sentence(p)) for p in pairs)
    return (f'<p class="note"><strong>Factors mixed at an angle:</strong> {found} (the angle of the rotation nearest to '
            f"a linear fit of the two dims on the two factors). MIG counts only the gap between a factor's best and "
            f"second dim, so such a pair scores low though the two dims hold both factors. When two factors carry the "
            f"same information (x and y on dSprites), the KL of a diagonal Gaussian code to N(0, I) is the same at "
            f"any angle of the pair, so a β-VAE leaves the angle to its seed (Rolinek et al. 2019, \"Variational "
            f"autoencoders pursue PCA directions (by accident)\"); the objectives that penalise the total "
            f"correlation (<code>--objective tc</code> or <code>factor</code>) penalise such mixing.</p>")
