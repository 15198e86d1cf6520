"""Many models at once: K models trained together (``betavae.train_many``) against the same K models
trained one after the other (``betavae.train``), the way a β sweep trains them.

Both ways train the same K configs (β spread over 1..16, seeds 0..K-1; burgess on 64x64 dSprites,
batch 64 by default) for the same steps. Each way runs in a fresh process per round, so its peak
memory is its own; the ways alternate round by round, so machine noise hits both alike. Throughput is
read from the runs' own step timing (metrics.jsonl, the first logged interval left out as warm-up):

- ``together``      K x the images/s each member logs (the members share every step);
- ``one-by-one``    K images / the summed time per image of the K runs (they run in turn).

Prints images/s of each way (median over rounds, with min and max), peak memory (CUDA: the most
allocated by tensors; CPU: the process's peak resident set), and last the ratio together / one-by-one.

    python benchmarks/parallel_models.py [--models 8] [--steps 200] [--rounds 3] [--batch-size 64] [--device cpu|cuda]
                                         [--precision auto|fp32|tf32|bf16]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import resource
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

import betavae
from betavae.data.dsprites import DSprites, render
from betavae.training.config import PRECISIONS
from betavae.training.logging import read_metrics
from betavae.training.loop import resolve_device


def configs(data: Path, root: Path, args: argparse.Namespace) -> list[betavae.TrainConfig]:
    betas = np.geomspace(1.0, 16.0, args.models)
    log_every = max(10, args.steps // 3)
    return [betavae.TrainConfig(data=str(data), arch=args.arch, batch_size=args.batch_size, lr=5e-4, latents=10,
                                beta=float(beta), seed=seed, steps=args.steps + log_every, log_every=log_every,
                                checkpoint_every=10 * (args.steps + log_every), figures=False, device=args.device,
                                precision=args.precision, out=str(root / f"run-{seed}"))
            for seed, beta in enumerate(betas)]


def images_per_second(run: Path) -> float:
    """The run's median logged images/s, its first interval (warm-up) left out."""
    return statistics.median(r["images_per_second"] for r in read_metrics(run)[1:])


def measure(way: str, data: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(images/s of all K models together, peak memory in MiB) of one way, in this process."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    cuda = resolve_device(args.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        runs_configs = configs(data, Path(tmp), args)
        if way == "together":
            runs = betavae.train_many(runs_configs, stream=io.StringIO())
            speed = len(runs) * images_per_second(runs[0])
        else:
            runs = [betavae.train(c, stream=io.StringIO()) for c in runs_configs]
            speed = len(runs) / sum(1.0 / images_per_second(r) for r in runs)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return speed, peak


def _child(way: str, data: Path, args: argparse.Namespace, results: "multiprocessing.Queue") -> None:
    results.put(measure(way, data, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=8, help="K, the models trained together")
    parser.add_argument("--arch", default="burgess")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=16384, help="distinct dSprites images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="training precision of both ways (auto: bf16 autocast on GPUs that support it)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    images = render(DSprites().sample_factors(args.images, np.random.default_rng(0)))
    context = multiprocessing.get_context("spawn")
    results: dict[str, list[tuple[float, float]]] = {"together": [], "one-by-one": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.npy"
        np.save(data, images)
        for _ in range(args.rounds):
            for way in results:
                queue = context.Queue()
                process = context.Process(target=_child, args=(way, data, args, queue))
                process.start()
                results[way].append(queue.get())
                process.join()
                if process.exitcode:
                    raise SystemExit(f"the {way} run failed (exit code {process.exitcode})")

    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    print(f"{args.models} models, arch {args.arch}, batch {args.batch_size}, {args.steps} timed steps x "
          f"{args.rounds} rounds, {name}, precision {args.precision}, torch {torch.__version__}")
    memory = "peak CUDA memory" if device.type == "cuda" else "peak resident memory"
    print(f"{'way':<12} {'images/s (median)':>18} {'min':>9} {'max':>9} {memory + ' (MiB)':>28}")
    medians = {}
    for way, values in results.items():
        speeds = [v[0] for v in values]
        medians[way] = statistics.median(speeds)
        peak = max(v[1] for v in values)
        print(f"{way:<12} {medians[way]:>18.0f} {min(speeds):>9.0f} {max(speeds):>9.0f} {peak:>28.0f}")
    print(f"ratio together / one-by-one: {medians['together'] / medians['one-by-one']:.2f}")


if __name__ == "__main__":
    main()
