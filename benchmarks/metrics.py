"""Metric suite speed: betavae's evaluation path against the scikit-learn path, on one model.

Runs the whole metric suite (``evaluate``, each distinct image encoded once) on the same model and
dataset twice, each in a process of its own so that peak memory is its own:

* ``scikit-learn``: DCI's gradient-boosted trees fitted by scikit-learn's
  ``GradientBoostingClassifier`` (one factor after another), the encoder in passes of 1,024 images
  (how the suite ran before betavae fitted the trees itself);
* ``betavae``: the same trees fitted by ``betavae.metrics.boosting``, the encoder's default passes
  (128 images on a CPU).

It prints, per metric, the seconds and every value of both paths side by side with their largest
difference, then each path's encoding seconds, wall time of the whole suite and peak resident
memory, and the ratio of the wall times. Every metric but DCI must give the same values; DCI within
0.01 (the two fits differ only by float rounding and how exact ties are broken).

    python benchmarks/metrics.py [--run RUN] [--scale 1] [--paths scikit-learn,betavae] [--threads N]
    python benchmarks/metrics.py --compare-dci 10000

Without ``--run`` the model is a freshly initialised Burgess et al. VAE with 10 latents (seed 0) on
dSprites. ``--scale`` multiplies the protocol's sample counts (default 1: the full protocol; the
scikit-learn path then takes about 8 minutes on 2 CPU cores, betavae's under one). ``--compare-dci N``
instead prints DCI by both fits on synthetic codes of several kinds with dSprites' factor sizes and N
training samples, with the largest difference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np

PATHS = {"scikit-learn": {"implementation": "scikit-learn", "batch_size": 1024},
         "betavae": {"implementation": "betavae", "batch_size": None}}


def scaled_params(scale: float, implementation: str) -> dict[str, dict[str, object]]:
    """Protocol sample counts (``num_*`` fields) times ``scale``; group sizes and bins unchanged."""
    from betavae.metrics import METRIC_TYPES

    params: dict[str, dict[str, object]] = {}
    for name, cls in METRIC_TYPES.items():
        defaults = cls()
        params[name] = {f.name: max(10, int(round(getattr(defaults, f.name) * scale)))
                        for f in fields(defaults) if f.name.startswith("num_") and f.name != "num_bins"}
    params["dci"]["implementation"] = implementation
    return params


def load_model(run: str | None, device: str):
    """(model, dataset, description) of ``run``, or a fresh Burgess VAE on dSprites."""
    import torch

    import betavae
    from betavae.data import DSprites, dataset_from_config
    from betavae.training.config import TrainConfig
    from betavae.training.distributed import SINGLE, device_for

    if run:
        return betavae.load(run, device_for(device, SINGLE)), dataset_from_config(TrainConfig.load(run)), run
    from betavae.models import build_model

    torch.manual_seed(0)
    model = build_model("burgess", 10, (1, 64, 64)).eval().to(device_for(device, SINGLE))
    return model, DSprites(), "fresh burgess VAE, z=10"


def run_path(args: argparse.Namespace) -> dict:
    """One path's suite in this process: values, seconds, wall time, peak memory (printed as JSON)."""
    import torch

    from betavae.metrics import encoder_fn, evaluate_with_details

    if args.threads:
        torch.set_num_threads(args.threads)
    path = PATHS[args.path]
    model, dataset, source = load_model(args.run, args.device)
    dataset.prepare_reads(len(dataset))  # a cached grid is read from disk before the clock starts
    encode = encoder_fn(model, batch_size=path["batch_size"])
    read_batch = encode.batch_size * max(1, 1024 // encode.batch_size)
    start = time.perf_counter()
    details = evaluate_with_details(encode, dataset, "all", args.seed, batch_size=read_batch,
                                    params=scaled_params(args.scale, path["implementation"]))
    wall = time.perf_counter() - start
    return {"source": source, "values": details.values, "seconds": details.seconds,
            "encode_seconds": details.encode_seconds, "images_encoded": details.images_encoded,
            "images_requested": details.images_requested, "wall": wall, "device": str(encode.device),
            "threads": torch.get_num_threads(),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def compare_paths(args: argparse.Namespace) -> int:
    results = {}
    load_before = os.getloadavg()[0]
    for name in args.paths.split(","):
        command = [sys.executable, __file__, "--path", name, "--scale", str(args.scale), "--seed", str(args.seed),
                   "--device", args.device] + (["--run", args.run] if args.run else []) + \
                  (["--threads", str(args.threads)] if args.threads else [])
        print(f"running the {name} path ...", file=sys.stderr, flush=True)
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    names = list(results)
    first = results[names[0]]
    print(f"model: {first['source']}; scale {args.scale} of the protocol's sample counts; seed {args.seed}; "
          f"device {first['device']}; torch threads {first['threads']}; {first['images_encoded']:,} distinct images "
          f"encoded for {first['images_requested']:,} requested")
    print(f"\n{'metric':26s}" + "".join(f"{n + ' s':>16s}" for n in names) + f"{'largest |diff|':>16s}")
    worst: dict[str, float] = {}
    for metric in first["values"]:
        diff = 0.0
        if len(names) > 1:
            a, b = results[names[0]]["values"][metric], results[names[1]]["values"][metric]
            diff = max(abs(a[k] - b[k]) for k in a)
        worst[metric] = diff
        print(f"{metric:26s}" + "".join(f"{results[n]['seconds'][metric]:16.1f}" for n in names) + f"{diff:16.2g}")
    print(f"{'shared encoding':26s}" + "".join(f"{results[n]['encode_seconds']:16.1f}" for n in names))
    print(f"{'wall (whole suite)':26s}" + "".join(f"{results[n]['wall']:16.1f}" for n in names))
    print(f"{'peak memory MB':26s}" + "".join(f"{results[n]['peak_mb']:16.0f}" for n in names))
    if len(names) > 1:
        print(f"\nwall time {names[0]} / {names[1]}: {results[names[0]]['wall'] / results[names[1]]['wall']:.1f}x "
              f"(1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on "
              f"{os.cpu_count()} cores)")
        print("\nvalues, side by side:")
        for metric in first["values"]:
            for key in first["values"][metric]:
                print(f"  {metric + '.' + key:58s}" + "".join(f"{results[n]['values'][metric][key]:12.4f}" for n in names))
        same = all(worst[m] == 0.0 for m in worst if m != "dci")
        print(f"\nevery metric but DCI identical: {same}; DCI largest difference {worst['dci']:.4f} "
              f"({'within' if worst['dci'] <= 0.01 else 'NOT within'} 0.01)")
        return 0 if same and worst["dci"] <= 0.01 else 1
    return 0


def synthetic_codes(factors: np.ndarray, sizes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Codes of five kinds for factor class indices ``(N, K)``; five near-constant extra dims each."""
    values = factors / (np.asarray(sizes) - 1.0)  # in [0, 1]
    rng = np.random.default_rng(1)
    inactive = 0.01 * rng.normal(size=(len(factors), 5))  # collapsed dimensions of a trained VAE
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(values.shape[1],) * 2))[0]
    mixed = values.copy()
    mixed[:, 3], mixed[:, 4] = values[:, 3] + 0.5 * values[:, 4], values[:, 4] + 0.5 * values[:, 3]
    kinds = {
        "factors + small noise": values + 0.02 * rng.normal(size=values.shape),
        "rotated factors": values @ rotation,
        "posX/posY half mixed": mixed + 0.05 * rng.normal(size=values.shape),
        "factors + large noise": values + 0.2 * rng.normal(size=values.shape),
        "duplicated dims": np.concatenate([values[:, :3], values[:, :2]], 1) + 0.05 * rng.normal(size=values.shape),
    }
    return {name: np.concatenate([codes, inactive], axis=1) for name, codes in kinds.items()}


def compare_dci(num_train: int) -> None:
    """DCI by both fits on the same synthetic codes (dSprites factor sizes)."""
    from betavae.data import DSprites
    from betavae.metrics import dci_from_codes

    sizes = DSprites.factor_sizes
    rng = np.random.default_rng(0)
    train = np.stack([rng.integers(0, s, num_train) for s in sizes], axis=1)
    test = np.stack([rng.integers(0, s, num_train // 2) for s in sizes], axis=1)
    codes_train, codes_test = synthetic_codes(train, sizes), synthetic_codes(test, sizes)
    print(f"DCI on synthetic codes, {num_train} train / {num_train // 2} test samples, dSprites factor sizes")
    print(f"{'codes':24s}{'fit':>14s}{'D':>8s}{'C':>8s}{'I train':>9s}{'I test':>8s}{'seconds':>9s}")
    worst = 0.0
    for kind in codes_train:
        results = {}
        for implementation in ("scikit-learn", "betavae"):
            start = time.perf_counter()
            r = dci_from_codes(codes_train[kind], train, codes_test[kind], test, implementation=implementation)
            results[implementation] = r
            print(f"{kind:24s}{implementation:>14s}{r['disentanglement']:8.4f}{r['completeness']:8.4f}"
                  f"{r['informativeness_train']:9.4f}{r['informativeness_test']:8.4f}"
                  f"{time.perf_counter() - start:9.1f}", flush=True)
        worst = max(worst, *(abs(results["betavae"][k] - results["scikit-learn"][k]) for k in results["betavae"]))
    print(f"largest difference between the fits over these codes: {worst:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a trained run directory (default: a fresh Burgess VAE on dSprites)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the protocol's sample counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--paths", default="scikit-learn,betavae", help="which paths, in order")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--compare-dci", type=int, metavar="N", help="instead: DCI by both fits on synthetic "
                        "codes of N training samples (the docs' table uses 10000)")
    parser.add_argument("--path", choices=sorted(PATHS), help=argparse.SUPPRESS)  # one path, in a child process
    args = parser.parse_args(argv)
    if args.compare_dci:
        compare_dci(args.compare_dci)
        return 0
    if args.path:
        print(json.dumps(run_path(args)))
        return 0
    return compare_paths(args)


if __name__ == "__main__":
    sys.exit(main())
