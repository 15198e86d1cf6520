"""The β trade-off study on dSprites that betavae ships: run a sweep, then ship its outputs with the package.

    python benchmarks/tradeoff_study.py --out runs/tradeoff -- \\
        --recipe fast-beta --beta 1,2,4,8,16 --seeds 3 --metrics mig,factor_vae_score
    python benchmarks/tradeoff_study.py --table      # the README's table, from the shipped study

Everything after ``--`` is passed to ``betavae sweep`` (which adds ``--out``). When the sweep has
finished every trial, its ``summary.json``, ``recommendation.json`` and ``tradeoff.png`` are copied to
``src/betavae/reference/studies/dsprites-tradeoff/`` (``betavae.reference.ship_study``) with a
``STUDY.json``: the sweep command, the hardware (``--hardware`` to describe it yourself), the date and
the wall-clock minutes of this run (``--notes`` adds words of your own). Killed, it resumes: run the same command again; ``STUDY.json`` then
says ``"resumed": true``, and its minutes count the last run only. ``--table`` prints the Markdown table
that goes in the README at ``<!-- TRADEOFF TABLE -->``; the run reports build theirs from the same study.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from betavae import reference
from betavae.cli import main as betavae_main
from betavae.errors import BetaVAEError
from betavae.sweep.spec import default_workers_threads


def describe_hardware(sweep_args: list[str]) -> str:
    """The CPU (model, cores, torch threads) and, unless the sweep runs on ``--device cpu``, the GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    workers = int(sweep_args[sweep_args.index("--workers") + 1]) if "--workers" in sweep_args[:-1] else 1
    threads = default_workers_threads(workers) if workers > 1 else torch.get_num_threads()
    words = (f"{cpu}, {os.cpu_count()} cores ({workers} sweep worker{'s' if workers > 1 else ''}, torch on {threads} "
             f"thread{'s' if threads > 1 else ''}{' each' if workers > 1 else ''})")
    device = sweep_args[sweep_args.index("--device") + 1] if "--device" in sweep_args[:-1] else "auto"
    if device != "cpu" and torch.cuda.is_available():
        words = f"{torch.cuda.get_device_name(0)}; {words}"
    return words


def markdown_table(found: reference.Study) -> str:
    """The study's per-weight table in Markdown, the recommended weight's row in bold."""
    header, rows, chosen = reference.study_table(found)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for i, cells in enumerate(rows):
        shown = [f"**{c}**" for c in cells] if i == chosen else cells
        lines.append("| " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, sweep_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s --out SWEEP [options] -- SWEEP FLAGS  |  %(prog)s --table")
    parser.add_argument("--out", help="the sweep's directory (its trials, study and outputs)")
    parser.add_argument("--name", default=reference.TRADEOFF_STUDY, help="the study's name (default: %(default)s)")
    parser.add_argument("--hardware", help="what the sweep ran on, in words (default: described from this machine)")
    parser.add_argument("--notes", help="what else the study's STUDY.json should say (the recipe as of the study, "
                        "what --eval-samples means, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace a study already shipped under --name")
    parser.add_argument("--table", action="store_true", help="print the shipped study's table in Markdown and exit")
    args = parser.parse_args(own)
    if args.table:
        found = reference.study(args.name)
        if found is None:
            parser.error(f"no study '{args.name}' is shipped in {reference.STUDIES_ROOT}")
        print(markdown_table(found))
        return 0
    if not args.out or not sweep_args:
        parser.error("give --out SWEEP and, after --, the flags of 'betavae sweep'")
    if "--out" in sweep_args:
        parser.error("give --out before the --, not among the sweep's flags")
    if (reference.STUDIES_ROOT / args.name).exists() and not args.overwrite:
        parser.error(f"study '{args.name}' is already shipped ({reference.STUDIES_ROOT / args.name}); pass --overwrite "
                     "to replace it")
    out = Path(args.out)
    resumed = (out / "study.db").exists()
    command = shlex.join(["betavae", "sweep", *sweep_args, "--out", str(out)])
    print(f"tradeoff_study: {command}", file=sys.stderr, flush=True)
    started = time.monotonic()
    code = betavae_main(["sweep", *sweep_args, "--out", str(out)])
    minutes = (time.monotonic() - started) / 60
    if code != 0:
        return code
    notes: dict[str, object] = {"resumed": True} if resumed else {}
    if args.notes:
        notes["notes"] = args.notes
    try:
        shipped = reference.ship_study(out, args.name, command=command, minutes=minutes, overwrite=args.overwrite,
                                       hardware=args.hardware or describe_hardware(sweep_args), **notes)
    except BetaVAEError as exc:  # a sweep with unfinished trials: the same command finishes it
        print(f"tradeoff_study: error: {exc}", file=sys.stderr)
        return 2
    print(f"tradeoff_study: {minutes:.1f} minutes; shipped to {shipped}. The README's table "
          f"(python benchmarks/tradeoff_study.py --table):\n{markdown_table(reference.study(args.name))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
