"""Training throughput on the CPU with subnormal floats kept against flushed to zero, from one checkpoint.

A long CPU run slows down as subnormal numbers (magnitudes below 1.2e-38, on which x86 arithmetic is
many times slower) build up in it, chiefly in Adam's first moments of weights whose gradients have
vanished. ``betavae.flush_denormals()`` (set by ``betavae train`` at its start) treats them as zero.
This script counts them in a run's newest checkpoint, then trains copies of the run further from it,
each in a fresh process (the setting must come before torch's worker threads start), alternating kept
and flushed, and prints the images per second of each stretch, their medians and the ratio.

    python benchmarks/cpu_denormals.py RUN                       # 1,000 steps each way, twice
    python benchmarks/cpu_denormals.py RUN --steps 500 --repeats 3 --threads 2

RUN is any run directory with a checkpoint (a finished one too: its copies are trained past its
``--steps``); it is only read. A run of a few steps has few subnormals and shows little difference:
the figures in docs/performance.md come from a FactorVAE run of the ``dlib-factor`` recipe after 30
minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(mode: str, run: Path, steps: int, threads: int) -> None:
    """Train ``run`` (a copy) ``steps`` further in this fresh process; print its stretch as JSON."""
    import io

    import torch

    if mode == "flushed" and not torch.set_flush_denormal(True):
        raise SystemExit("this CPU cannot flush subnormals")
    torch.set_num_threads(threads)
    import betavae
    from betavae.training import loop
    from betavae.training.logging import read_metrics

    if mode == "kept":  # train as betavae did before it flushed them: leave the setting alone
        loop.flush_denormals = lambda: False

    start = read_metrics(run)[-1]["step"]
    started = time.perf_counter()
    betavae.resume(run, steps=start + steps, time_limit=10**6, stream=io.StringIO())
    wall = time.perf_counter() - started
    rows = [r for r in read_metrics(run) if r["step"] > start]
    print(json.dumps({"mode": mode, "from_step": start, "steps": steps, "wall_seconds": wall,
                      "images_per_second": [r["images_per_second"] for r in rows]}))


def subnormals(run: Path) -> tuple[int, int, dict[str, int]]:
    """(float values, subnormal values, subnormals per tensor) of the run's newest checkpoint."""
    import torch
    from safetensors.torch import load_file

    from betavae.training.checkpoint import list_checkpoints

    tensors = load_file(str(list_checkpoints(run)[-1] / "tensors.safetensors"))
    total, per = 0, {}
    for name, value in tensors.items():
        if value.is_floating_point():
            value = value.float()
            total += value.numel()
            count = int(((value != 0) & (value.abs() < torch.finfo(torch.float32).tiny)).sum())
            if count:
                per[name] = count
    return total, sum(per.values()), per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory with a checkpoint (only read)")
    parser.add_argument("--steps", type=int, default=1000, help="steps trained each time (default: 1000)")
    parser.add_argument("--repeats", type=int, default=2, help="times each way, alternating (default: 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "COPY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.steps, args.threads)
        return 0
    run = Path(args.run)
    if not (run / "checkpoints").is_dir():
        print(f"{run} holds no checkpoints to train on from; give a run directory that has some.", file=sys.stderr)
        return 2
    total, count, per = subnormals(run)
    top = ", ".join(f"{name} {n:,}" for name, n in sorted(per.items(), key=lambda kv: -kv[1])[:3])
    print(f"{run}: {count:,} subnormal values of {total:,} in its newest checkpoint ({top or 'none'})")
    results: dict[str, list[dict]] = {"kept": [], "flushed": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for mode in ("kept", "flushed"):
                copy = Path(scratch) / f"{mode}-{repeat}"
                shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tensorboard", "figures"))
                out = subprocess.run([sys.executable, __file__, str(run), "--steps", str(args.steps), "--threads",
                                      str(args.threads), "--child", mode, str(copy)],
                                     capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return 1
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results[mode].append(row)
                rates = ", ".join(f"{v:.0f}" for v in row["images_per_second"])
                print(f"{mode:>7} #{repeat}: {row['steps']} steps from step {row['from_step']} in "
                      f"{row['wall_seconds']:.1f} s; images/s per logged stretch: {rates}", flush=True)
                shutil.rmtree(copy)
    medians = {mode: statistics.median(v for row in rows for v in row["images_per_second"])
               for mode, rows in results.items()}
    walls = {mode: statistics.median(row["wall_seconds"] for row in rows) for mode, rows in results.items()}
    print(f"\nmedian images/s: kept {medians['kept']:.0f}, flushed {medians['flushed']:.0f} "
          f"(x{medians['flushed'] / medians['kept']:.2f}); median wall per {args.steps} steps: "
          f"kept {walls['kept']:.1f} s, flushed {walls['flushed']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
