"""The ``betavae`` command: parses arguments, builds objects, calls library functions.

Every problem the user can fix ends in one line ``betavae: error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from betavae.errors import BetaVAEError
from betavae.training.config import TrainConfig, field_type

DEMO_STEPS = 2000


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
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    values.update({k: v for k, v in overrides.items() if k not in values})
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    from betavae.training import resume, train

    if args.resume:
        given = [f.name for f in fields(TrainConfig) if getattr(args, f.name) is not None and f.name != "steps"]
        if given:
            print(f"betavae: error: --resume continues a run with its saved config; drop {', '.join('--' + g.replace('_', '-') for g in given)} "
                  "(only --steps may be given, to train further).", file=sys.stderr)
            return 2
        resume(args.resume, steps=args.steps)
    else:
        train(config_from_args(args))
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
    from betavae.training import train

    out = _fresh_dir(Path(args.out))
    if out != Path(args.out):
        print(f"betavae: {args.out} exists (kept as it is); this demo writes to {out}", file=sys.stderr)
    # lr 1e-3: with 5e-4 the KL sits at ~0 for the first ~500 steps while the decoder learns the
    # mean image, which wastes a quarter of a short demo.
    config = TrainConfig(dataset="dsprites", beta=4.0, latents=10, arch="burgess", lr=1e-3, batch_size=64,
                         steps=args.steps, seed=args.seed, out=str(out), log_every=50, checkpoint_every=500,
                         device=args.device)
    run_dir = train(config)
    print(
        f"\nDemo finished. Open these files:\n"
        f"  {run_dir}/figures/training_curves.png   reconstruction, KL and β·KL, KL per dimension\n"
        f"  {run_dir}/figures/traversals.png        one row per latent (sorted by KL), swept from -3 to 3\n"
        f"  {run_dir}/figures/traversals.gif        the same, animated\n"
        f"  {run_dir}/figures/reconstructions.png   inputs over reconstructions\n"
        f"  {run_dir}/figures/samples.png           decoded samples of the prior\n"
        f"  {run_dir}/diagnosis.json                the diagnosis printed above\n"
        f"A {args.steps}-step run ({args.steps * 64:,} images) shows the training dynamics and first structure"
        f" (position and scale usually first), not a finished disentanglement: published dSprites models"
        f" train for 300,000 steps. Train further with: betavae train --resume {run_dir} --steps 20000",
    )
    return 0


def cmd_traverse(args: argparse.Namespace) -> int:
    import json

    from betavae.report.figures import make_figures
    from betavae.training import TrainConfig as Config
    from betavae.training import load
    from betavae.training.logging import read_metrics
    from betavae.data import dataset_from_config

    run_dir = Path(args.run)
    config = Config.load(run_dir)
    model = load(run_dir)
    history = read_metrics(run_dir)
    diagnosis_path = run_dir / "diagnosis.json"
    if not history or not diagnosis_path.is_file():
        raise BetaVAEError(f"{run_dir} has no finished training logs (metrics.jsonl, diagnosis.json); finish or resume the run first.")
    diagnosis = json.loads(diagnosis_path.read_text())
    out = make_figures(run_dir, model, dataset_from_config(config), history, diagnosis, seed=args.seed)
    print(f"figures written to {out}")
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

    demo = sub.add_parser("demo", help="train a β-VAE (β = 4) on dSprites for a few minutes and draw its figures",
                          description="A short β = 4 run on procedurally rendered dSprites, with figures and a diagnosis.")
    demo.add_argument("--out", default="runs/demo", help="run directory; a numbered one is used if it exists (default: runs/demo)")
    demo.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"training steps (default: {DEMO_STEPS})")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    demo.set_defaults(func=cmd_demo)

    traverse = sub.add_parser("traverse", help="redraw a run's figures (traversals, reconstructions, samples, curves)")
    traverse.add_argument("run", metavar="RUN", help="run directory")
    traverse.add_argument("--seed", type=int, default=0, help="chooses the images shown (default: 0)")
    traverse.set_defaults(func=cmd_traverse)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BetaVAEError as exc:
        print(f"betavae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("betavae: interrupted; checkpoints written so far are kept (resume with 'betavae train --resume RUN').",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
