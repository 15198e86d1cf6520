"""The ``betavae`` command: parses arguments, builds objects, calls library functions.

Every problem the user can fix ends in one line ``betavae: error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from betavae import reference, training
from betavae.checks import check_data_fits_model, check_output_path, check_seed, one_line, shown
from betavae.data import dataset_from_config
from betavae.errors import BetaVAEError
from betavae.training import rundir
from betavae.training.config import TrainConfig, field_type, recipe_config
from betavae.training.logging import read_metrics
from betavae.training.loop import denormals_flushed
from betavae.training.recipes import RECIPES, format_recipes, recipe_values
from betavae.training.rundir import DIAGNOSIS_FILE, EVALUATION_FILE, METRICS_FILE, refuse_writes

# The metrics, report and sweep packages are imported by the commands that use them: they bring in
# numba and scikit-learn, matplotlib and Optuna, which every other command (and --help) would wait for.

DEMO_RECIPE = "fast-beta"
DEMO_STEPS = RECIPES[DEMO_RECIPE].values["steps"]
DEMO_METRICS_NOTE = "the full suite, 'betavae evaluate RUN', encodes most of the 737,280-image grid"


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per :class:`TrainConfig` field, with the field's help text and choices."""
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = field_type(f.type)
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {f.default})")
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(),
                                choices=f.metadata.get("choices"),
                                help=f"{help_text} (default: {f.default})")


def config_from_args(args: argparse.Namespace, **overrides: object) -> TrainConfig:
    """The config the flags ask for: a ``--recipe``'s values first, then ``overrides``; explicit flags win."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    values.update({k: v for k, v in overrides.items() if k not in values})
    if values.get("recipe") is not None:
        values = {**recipe_values(values["recipe"]), **values}
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        given = [f.name for f in fields(TrainConfig)
                 if getattr(args, f.name) is not None and f.name not in ("steps", "time_limit")]
        if given:
            print(f"betavae: error: --resume continues a run with its saved config; drop {', '.join('--' + g.replace('_', '-') for g in given)} "
                  "(only --steps and --time-limit may be given, to train further).", file=sys.stderr)
            return 2
        training.resume(args.resume, steps=args.steps, time_limit=args.time_limit)
    else:
        training.train(config_from_args(args))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.name:
        values = {k: v for k, v in recipe_values(args.name).items() if k != "recipe"}
        print(f"{args.name}: {RECIPES[args.name].summary}")
        for key, value in values.items():
            print(f"  --{key.replace('_', '-')} {value}")
        return 0
    print(format_recipes())
    print("\nTrain with one: betavae train --recipe NAME [flags that override it]; 'betavae recipes NAME' shows its values.")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    if args.copy:
        name, destination = args.copy
        print(f"betavae: copied {name} to {reference.copy(name, destination)}")
        return 0
    print(reference.format_references())
    return 0


def _fresh_dir(path: Path) -> Path:
    """``path`` if free, else ``path-2``, ``path-3``, ... (an earlier demo is never overwritten)."""
    if not path.exists():
        return path
    n = 2
    while Path(f"{path}-{n}").exists():
        n += 1
    return Path(f"{path}-{n}")


def cmd_demo(args: argparse.Namespace) -> int:
    out = _fresh_dir(check_output_path(args.out, "--out"))
    if out != Path(args.out):
        print(f"betavae: {args.out} exists (kept as it is); this demo writes to {out}", file=sys.stderr)
    # The seed's own β-VAE, with the recipe that gets furthest on a CPU in a few minutes (docs/recipes.md).
    config = recipe_config(DEMO_RECIPE, steps=args.steps, seed=args.seed, out=str(out), log_every=50,
                           checkpoint_every=1000, device=args.device)
    run_dir = training.train(config)
    from betavae.metrics import evaluate_run, format_table

    print(f"betavae: evaluating (MIG and unsupervised measures; {DEMO_METRICS_NOTE})", file=sys.stderr)
    record = evaluate_run(run_dir, metrics="mig,unsupervised", seed=0)
    from betavae.report import run_report

    shown = reference.DEMO_REFERENCE if reference.DEMO_REFERENCE in reference.names() else None
    run_report(run_dir, seed=args.seed, reference=shown)  # again, now with the metrics and the reference
    print(
        f"\nDemo finished. Metrics (disentanglement_lib protocol, mean codes):\n{format_table(record)}\n\n"
        f"{_reference_comparison(record, shown)}"
        f"Open these files:\n"
        + _file_list(run_dir, [
            (rundir.REPORT_FILE, "all of the below, the metrics and the reference model in one page"),
            (f"{rundir.FIGURES_DIR}/{rundir.TRAINING_CURVES_FIGURE}", "reconstruction, KL and β·KL, KL per dimension"),
            (f"{rundir.FIGURES_DIR}/{rundir.TRAVERSALS_FIGURE}", "one row per latent (sorted by KL), swept from -3 to 3"),
            (f"{rundir.FIGURES_DIR}/{rundir.TRAVERSALS_ANIMATION}", "the same, animated"),
            (f"{rundir.FIGURES_DIR}/{rundir.RECONSTRUCTIONS_FIGURE}", "inputs over reconstructions"),
            (f"{rundir.FIGURES_DIR}/{rundir.SAMPLES_FIGURE}", "decoded samples of the prior"),
            (DIAGNOSIS_FILE, "the diagnosis printed above"),
            (EVALUATION_FILE, "the metrics with their parameters"),
        ]) +
        f"A {args.steps:,}-step run ({args.steps * config.batch_size:,} images) learns position and scale, the first"
        f" structure a β-VAE finds on dSprites. The β-VAE's KL is the same for any rotation of x and y, so only the"
        f" noise of its codes turns them onto the dims' axes; {DEMO_RECIPE} speeds that with a large β and a"
        f" learning rate held high until its last fifth (docs/recipes.md). {_rotations_found(record)}Shape and"
        f" orientation need far longer training (published models: 300,000 steps) and a total-correlation objective:"
        f" {_what_draws_the_shapes(shown)}. Train further with: betavae train --resume {run_dir} --steps 20000\n"
        f"and evaluate every metric with: betavae evaluate {run_dir}",
    )
    return 0


def _what_draws_the_shapes(shown: str | None) -> str:
    """Where the demo's closing words send a user who wants the shapes: the reference model it showed."""
    if shown is None:
        return "betavae train --recipe broadcast-factor --time-limit 30 disentangles x, y and scale within 30 minutes" \
               " on 2 CPU cores and draws ellipses with their orientation (docs/recipes.md)"
    return f"the reference model above, {shown}, is one such run on a CPU, and its reconstructions are in the report" \
           " beside this run's (betavae reference lists every shipped model)"


def _rotations_found(record: dict) -> str:
    """What the evaluated code does with pairs of factors (``factor_pairs`` of its evaluation), as a sentence."""
    from betavae.report.analysis import ROTATION_DEGREES, rotation_sentence

    if "factor_pairs" not in record:  # a dataset without factors
        return ""
    pairs = [p for p in record["factor_pairs"] if p["turned"]]
    if not pairs:
        return f"This run has no pair of factors mixed at an angle of {ROTATION_DEGREES:g}° or more. "
    return "In this run, " + "; ".join(rotation_sentence(p) for p in pairs) + ". "


def _file_list(run_dir: Path, entries: list[tuple[str, str]]) -> str:
    """``  RUN/NAME   what it holds`` lines, the descriptions aligned."""
    paths = [f"{run_dir}/{name}" for name, _ in entries]
    width = max(map(len, paths)) + 3
    return "".join(f"  {path:<{width}}{what}\n" for path, (_, what) in zip(paths, entries))


def _reference_comparison(record: dict, name: str | None) -> str:
    """The demo's headline metrics beside the shipped reference model's, as text."""
    if name is None:
        return "(This installation ships no reference model to compare with.)\n\n"
    meta, theirs = reference.info(name), reference.summary_values(reference.evaluation(name))
    ours = reference.summary_values(record)
    lines = [f"Beside the shipped reference model '{name}' ({meta.get('summary', '')}; "
             f"{meta.get('steps', 0):,} steps, {meta.get('train_minutes', 0):.0f} minutes on {meta.get('hardware', 'a CPU')}):",
             f"  {'measure':<22}{'this demo':>12}{'reference':>12}"]
    for label, value in theirs.items():
        mine = f"{ours[label]:.3f}" if label in ours else "-"
        lines.append(f"  {label:<22}{mine:>12}{value:>12.3f}")
    ours_shown = {r["factor"]: r["accuracy"] for r in record.get("reconstructed_factors") or []}
    theirs_shown = {r["factor"]: r["accuracy"] for r in reference.evaluation(name).get("reconstructed_factors") or []}
    shared = [f for f in theirs_shown if f in ours_shown]
    if shared:
        images = next(r.get("images") for r in record["reconstructed_factors"])
        lines.append(f"  factors the reconstructions show (of {images:,} images; docs/metrics.md):")
        lines += [f"    {f:<20}{100 * ours_shown[f]:>11.1f}%{100 * theirs_shown[f]:>11.1f}%" for f in shared]
    lines.append(f"  its traversals and metrics are in the report; its files: {reference.path(name)}")
    lines.append(f"  train one like it: {meta.get('command', 'betavae train --recipe fast-cpu')}")
    return "\n".join(lines) + "\n\n"


def cmd_traverse(args: argparse.Namespace) -> int:
    from betavae.report.figures import make_figures

    check_seed(args.seed)  # before the run is read
    run_dir = Path(args.run)
    refuse_writes(run_dir, "redraw the figures of")
    config = TrainConfig.load(run_dir)
    model = training.load(run_dir)
    history = read_metrics(run_dir)
    diagnosis_path = run_dir / DIAGNOSIS_FILE
    if not history or not diagnosis_path.is_file():
        raise BetaVAEError(f"{run_dir} has no finished training logs ({METRICS_FILE}, {DIAGNOSIS_FILE}); "
                           "finish or resume the run first.")
    diagnosis = _read_diagnosis(diagnosis_path, model.latents)
    dataset = dataset_from_config(config)
    check_data_fits_model(dataset, model, run_dir)
    out = make_figures(run_dir, model, dataset, history, diagnosis, seed=args.seed)
    print(f"figures written to {out}")
    return 0


def _read_diagnosis(path: Path, latents: int) -> dict:
    """``diagnosis.json`` with what the figures draw from it, or a :class:`BetaVAEError` naming the file."""
    from betavae.report.figures import diagnosis_problem

    try:
        diagnosis = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problem: str | None = f"it is not readable JSON ({exc})"
    else:
        problem = diagnosis_problem(diagnosis, latents)
    if problem is None:
        return diagnosis
    raise BetaVAEError(f"{path} is damaged: {problem}. Resume the run to write it again "
                       f"('betavae train --resume {path.parent} --steps N' with N beyond its last step).")


def _number_list(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BetaVAEError(f"{flag} takes comma-separated numbers such as 1,2,4,8; got '{text}'.") from None


def _seed_list(text: str) -> list[int]:
    """``3`` -> seeds 0, 1, 2; ``0,5,7`` -> those seeds."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BetaVAEError(f"--seeds takes a count (3) or comma-separated seeds (0,5,7); got '{text}'.") from None
    if "," not in text and len(values) == 1:
        from betavae.sweep.spec import MAX_TRIALS

        if not 1 <= values[0] <= MAX_TRIALS:
            raise BetaVAEError(f"--seeds N trains N seeds (0 to N-1) per weight, from 1 to {MAX_TRIALS:,}; "
                               f"got {shown(values[0])}.")
        return list(range(values[0]))
    return values


def cmd_sweep(args: argparse.Namespace) -> int:
    from betavae.sweep import SweepSpec, run_sweep
    from betavae.sweep.spec import WEIGHT_FIELDS

    # a recipe's values first, explicit flags over them; the sweep sets the swept weight, seed and out itself
    recipe = {}
    if args.recipe is not None:
        recipe = recipe_values(args.recipe)
    objective = args.objective or recipe.get("objective", "beta")
    if args.beta is not None and args.weights is not None:
        raise BetaVAEError("give the swept values once: --weights (any objective) or --beta (beta, tc), not both.")
    if args.beta is not None and WEIGHT_FIELDS.get(objective) != "beta":
        raise BetaVAEError(f"--beta lists β for --objective beta or tc; --objective {objective} sweeps "
                           f"{WEIGHT_FIELDS.get(objective, 'its weight')}: pass --weights.")
    text = args.beta if args.beta is not None else args.weights
    if text is None:
        raise BetaVAEError("nothing to sweep: pass --beta 1,2,4,8 (beta, tc) or --weights LIST (any objective).")
    base = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
            if f.name not in ("beta", "seed", "out") and getattr(args, f.name, None) is not None}
    base = {**{k: v for k, v in recipe.items() if k not in ("seed", "out", WEIGHT_FIELDS.get(objective))}, **base}
    spec = SweepSpec(out=args.out, weights=_number_list(text, "--beta" if args.beta is not None else "--weights"),
                     seeds=_seed_list(args.seeds), base=base, metrics=args.metrics, metric=args.metric,
                     storage=args.storage, study_name=args.study_name, workers=args.workers, parallel=args.parallel,
                     tolerance=args.tolerance,
                     eval_samples=args.eval_samples, eval_seed=args.eval_seed, udr_samples=args.udr_samples,
                     udr_correlation=args.udr_correlation, heartbeat_seconds=args.heartbeat)
    run_sweep(spec)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    from betavae.metrics import ProgressPrinter, evaluate_run, format_table

    started = time.perf_counter()
    record = evaluate_run(args.run, metrics=args.metrics, seed=args.seed, batch_size=args.batch_size,
                          representation=args.representation, device=args.device, progress=ProgressPrinter())
    print(f"betavae evaluate: {time.perf_counter() - started:.1f} s on {record['device']}", file=sys.stderr)
    print(format_table(record))
    pairs = _pairs_summary(record)
    print(f"\n{pairs}" if pairs else "", end="")
    shown = _readback_summary(record)
    print(f"\n{shown}" if shown else "", end="")
    print(f"\n{record['images_encoded']:,} distinct images encoded for {record['images_requested']:,} requested; "
          f"written to {Path(args.run) / EVALUATION_FILE}")
    return 0


def _pairs_summary(record: dict) -> str:
    """The ``factor_pairs`` of an evaluation record in lines: each pair of factors that two dims follow, with
    its angle to the dims' axes, and why a turned pair lowers MIG (empty when the record has none)."""
    from betavae.report.analysis import ROTATION_DEGREES

    pairs = record.get("factor_pairs") or []
    if not pairs:
        return ""
    lines = ["Pairs of factors that two dims follow (angle to the dims' axes; 0° = one factor per dim):"]
    for p in pairs:
        (f, g), (a, b) = p["factors"], p["dims"]
        lines.append(f"  {f} and {g}: z{a} and z{b}, {p['angle']:.0f}°" + ("  (turned)" if p["turned"] else ""))
    if any(p["turned"] for p in pairs):
        lines.append(f"A pair turned {ROTATION_DEGREES:g}° or more spreads each factor over both dims, which MIG "
                     f"scores low whatever the dims hold; docs/metrics.md says why.")
    return "\n".join(lines) + "\n"


def _readback_summary(record: dict) -> str:
    """The ``reconstructed_factors`` of an evaluation record in lines: how often a reconstruction is nearest to
    its input among the images that differ from it in one factor (empty when the record has none)."""
    rows = record.get("reconstructed_factors") or []
    if not rows:
        return ""
    width = max(len(r["factor"]) for r in rows)
    images = rows[0].get("images")
    lines = [f"Factors the reconstructions show{f' ({images:,} images)' if images else ''}: how often a reconstruction is"
             " nearer its input than",
             "every image that differs from the input in that factor alone (floor: the mean image in place of every"
             " reconstruction):"]
    lines += [f"  {r['factor']:<{width}}  {100 * r['accuracy']:5.1f}% of images   floor {100 * r['floor']:5.1f}%   "
              f"({r['values']} values)" for r in rows]
    return "\n".join(lines) + "\n"


def cmd_report(args: argparse.Namespace) -> int:
    from betavae.report import run_report

    path = run_report(args.run, seed=args.seed, mi_images=args.images)
    print(f"report written to {path}")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from betavae.report.explorer import explore

    explore(args.run, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="betavae",
        description="Learn disentangled representations with the β-VAE and its successors.",
        epilog="Run 'betavae COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser("train", help="train a model", description=(
        "Train a β-VAE. Logs reconstruction, KL, β·KL and KL per dimension to RUN/metrics.jsonl and "
        "TensorBoard, writes checkpoints, the final model, a diagnosis and figures."))
    add_config_arguments(train)
    train.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its newest checkpoint")
    train.set_defaults(func=cmd_train)

    recipes = sub.add_parser("recipes", help="list the named training recipes (betavae train --recipe NAME)")
    recipes.add_argument("name", nargs="?", choices=None, metavar="NAME", help="show one recipe's values")
    recipes.set_defaults(func=cmd_recipes)

    reference = sub.add_parser("reference", help="list the shipped reference models and their metrics")
    reference.add_argument("--copy", nargs=2, metavar=("NAME", "DIR"), help="copy reference model NAME to DIR (to "
                           "evaluate or train it further; the shipped copy stays as it is)")
    reference.set_defaults(func=cmd_reference)

    demo = sub.add_parser("demo", help=f"train a β-VAE (β = {RECIPES[DEMO_RECIPE].values['beta']:g}) on dSprites for a "
                          "few minutes and draw its figures",
                          description=f"A short β-VAE run (recipe {DEMO_RECIPE}: {RECIPES[DEMO_RECIPE].summary}) on "
                                      "procedurally rendered dSprites, with figures, a diagnosis and its evaluation.")
    demo.add_argument("--out", default="runs/demo", help="run directory; a numbered one is used if it exists (default: runs/demo)")
    demo.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"training steps (default: {DEMO_STEPS})")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    demo.set_defaults(func=cmd_demo)

    traverse = sub.add_parser("traverse", help="redraw a run's figures (traversals, reconstructions, samples, curves)")
    traverse.add_argument("run", metavar="RUN", help="run directory")
    traverse.add_argument("--seed", type=int, default=0, help="chooses the images shown (default: 0)")
    traverse.set_defaults(func=cmd_traverse)

    evaluate = sub.add_parser("evaluate", help="disentanglement metrics of a trained run (BetaVAE and FactorVAE scores, MIG, SAP, DCI, ...)",
                              description="Evaluate RUN's encoder with the disentanglement_lib protocol (mean codes, "
                                          "factors as class indices) and write RUN/evaluation.json. See docs/metrics.md.")
    evaluate.add_argument("run", metavar="RUN", help="run directory")
    evaluate.add_argument("--metrics", default="all", metavar="LIST",
                          help="'all' or a comma-separated list of: beta_vae_score, factor_vae_score, mig, sap, dci, "
                               "modularity_explicitness, unsupervised, ... (default: all the data supports)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the metric samples (default: 0)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=None,
                          help="images per encoder pass (default: 128 on a CPU, 1024 on a GPU)")
    evaluate.add_argument("--device", default="auto", help="where the model encodes: auto (CUDA when present), cpu, cuda, cuda:N")
    evaluate.add_argument("--representation", default="mean", choices=("mean", "sampled"),
                          help="posterior means (the protocol) or one sample per image (default: mean)")
    evaluate.set_defaults(func=cmd_evaluate)

    report = sub.add_parser("report", help="write RUN/report.html: config, diagnosis, curves, figures, metrics",
                            description="Write RUN/report.html, one self-contained page (images embedded) with the "
                                        "run's config, diagnosis, training curves, KL per dim, reconstructions, samples, "
                                        "traversals, evaluation metrics and, with factor labels, code-factor mutual "
                                        "information and latent-vs-factor plots. See docs/report.md.")
    report.add_argument("run", metavar="RUN", help="run directory")
    report.add_argument("--seed", type=int, default=0, help="chooses the images shown and encoded (default: 0)")
    report.add_argument("--images", type=_positive_int, default=5000, metavar="N",
                        help="images encoded for the factor sections (default: 5000)")
    report.set_defaults(func=cmd_report)

    explore = sub.add_parser("explore", help="a local web page with one slider per latent dim",
                             description="Serve a local web page to explore RUN's latent space: one slider per latent "
                                         "dim (sorted by KL, collapsed dims greyed), the decoded image updating live, "
                                         "and real images to start from. See docs/report.md.")
    explore.add_argument("run", metavar="RUN", help="run directory")
    explore.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    explore.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default: 127.0.0.1, this machine only)")
    explore.set_defaults(func=cmd_explore)

    sweep = sub.add_parser("sweep", help="choose β: train and evaluate a grid of weights × seeds, plot the trade-off, recommend",
                           description=(
        "Train every (weight, seed) pair as a run under SWEEP/trials/, evaluate each, and write SWEEP/summary.csv, "
        "summary.json, tradeoff.png and recommendation.json. Trials live in an Optuna study (SQLite in SWEEP by "
        "default; a PostgreSQL URL lets the same command on several machines share the grid). Run the same command "
        "again to resume after a kill. See docs/sweep.md."))
    sweep.add_argument("--beta", metavar="LIST", help="β values to sweep for --objective beta or tc, e.g. 1,2,4,8,16")
    sweep.add_argument("--weights", metavar="LIST", help="values of the objective's weight to sweep (beta, tc: β; "
                       "capacity: capacity_max; factor: factor_gamma; dip1, dip2: dip_lambda_od)")
    sweep.add_argument("--seeds", default="3", metavar="N|LIST", help="number of seeds (0..N-1) or a list of seeds (default: 3)")
    sweep.add_argument("--out", default="sweep", help="sweep directory (default: sweep)")
    sweep.add_argument("--storage", metavar="URL", help="Optuna storage: sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB "
                       "(default: sqlite:///OUT/study.db)")
    sweep.add_argument("--study-name", metavar="NAME", help="study name in the storage (default: betavae-sweep-<OUT's name>)")
    sweep.add_argument("--workers", type=int, default=1, metavar="K", help="local worker processes (default: 1)")
    sweep.add_argument("--parallel", type=_positive_int, default=1, metavar="K",
                       help="trials each worker trains together in one process as one batched computation: the same "
                            "models as trained one by one; see docs/performance.md for when it is faster (default: 1)")
    sweep.add_argument("--metric", metavar="NAME", help="metric the recommendation ranks by: udr, a metric (mig, dci, ...) "
                       "or METRIC.VALUE (default: mig with ground-truth factors, udr without)")
    sweep.add_argument("--metrics", default="all", metavar="LIST", help="metrics evaluated for every trial (default: all "
                       "the data supports)")
    sweep.add_argument("--tolerance", type=float, default=0.1, help="relative reconstruction tolerance of the recommendation "
                       "(default: 0.1, within 10%% of the best mean NLL)")
    sweep.add_argument("--eval-samples", type=int, metavar="N", help="scale the metrics' sample counts down to N (default: "
                       "the full protocol)")
    sweep.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation samples, the same for every trial (default: 0)")
    sweep.add_argument("--udr-samples", type=int, default=1000, metavar="N", help="images encoded per trial for UDR (default: 1000)")
    sweep.add_argument("--udr-correlation", default="spearman", choices=("spearman", "lasso"),
                       help="UDR similarity matrix (default: spearman)")
    sweep.add_argument("--heartbeat", type=int, default=10, metavar="SECONDS", help="trial heartbeat interval; a trial "
                       "silent for 3 intervals is re-run (default: 10)")
    add_config_arguments(sweep, skip=("beta", "seed", "out"))
    sweep.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    with denormals_flushed():  # before any parallel work, so that every CPU worker thread has it
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BetaVAEError as exc:
        print(f"betavae: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"betavae: interrupted; {_interrupted(args)}", file=sys.stderr)
        return 130


def _interrupted(args: argparse.Namespace) -> str:
    """What an interrupted (Ctrl-C) command left behind, and how to go on."""
    if args.command in ("train", "demo"):
        run = args.resume or (args.command == "train" and args.out) or "RUN"
        return f"checkpoints written so far are kept (resume with 'betavae train --resume {shown(run, 200)}')."
    if args.command == "evaluate":
        return (f"{shown(Path(args.run) / EVALUATION_FILE, 200)} was left as it was (an evaluation writes it only "
                "when it finishes); run the command again to evaluate.")
    if args.command == "sweep":
        return ("finished trials are kept and the running ones were re-enqueued; run the same command again to "
                "finish the sweep.")
    if args.command in ("report", "traverse"):
        return ("figures drawn so far are kept (each is written whole) and nothing else was changed; run the "
                "command again to finish.")
    if args.command == "reference" and args.copy:
        return f"the copy in {shown(args.copy[1], 200)} may be incomplete; remove it and copy again."
    return "nothing was changed."


if __name__ == "__main__":
    sys.exit(main())
