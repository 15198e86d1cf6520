"""Metric suite speed: shared codes (``evaluate``) against encoding every drawn image afresh.

Runs the full metric suite twice on one model and one dataset (dSprites by default), first with
the shared code table (``cache=True``: each distinct image encoded once), then encoding every
drawn image afresh (``cache=False``), and prints:

1. images requested by the metrics and images actually encoded, at this scale and (draws only,
   no encoding) at the full protocol's sample counts;
2. wall time of each path and their ratio, and per-metric seconds (drawing and scoring; encoding
   too on the naive path; the cached path's shared encoding on its own line);
3. whether both paths gave identical values, and the peak resident memory after each path.

    python benchmarks/metrics.py [--run RUN] [--scale 0.1] [--batch-size 1024] [--dci-importance random_forest] [--threads 1]
    python benchmarks/metrics.py --compare-dci 10000

``--scale 1`` runs the protocol's sample counts (10,000 / 5,000 ...: about half an hour on 2 CPU
cores for both paths); the default 0.1 runs in a few minutes. Fewer samples repeat fewer images,
so the cache saves less at small scales: the full-scale line of (1) gives the saving there.
Without ``--run`` the model is a freshly initialised Burgess et al. VAE with 10 latents (seed 0):
encoding costs the same whether or not it was trained. ``--compare-dci N`` instead prints DCI
with both importance estimators on the same synthetic codes (the table in docs/metrics.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import fields

import numpy as np
import torch

from betavae.data import DSprites
from betavae.metrics import METRIC_TYPES, encoder_fn, evaluate_with_details, metric_rng


def scaled_params(scale: float, dci_importance: str) -> dict[str, dict[str, object]]:
    """Protocol sample counts (``num_*`` fields) times ``scale``; group sizes and bins unchanged."""
    params: dict[str, dict[str, object]] = {}
    for name, cls in METRIC_TYPES.items():
        defaults = cls()
        params[name] = {f.name: max(10, int(round(getattr(defaults, f.name) * scale)))
                        for f in fields(defaults) if f.name.startswith("num_") and f.name != "num_bins"}
    params["dci"]["importance"] = dci_importance
    return params


def draw_counts(dataset, params: dict[str, dict[str, object]], seed: int) -> tuple[int, int]:
    """Images requested and distinct images over every metric's draws (no encoding)."""
    indices = []
    for name, cls in METRIC_TYPES.items():
        draw = cls(**params.get(name, {})).draw(dataset, metric_rng(seed, name))
        indices += [idx.reshape(-1) for idx in draw.indices.values()]
    flat = np.concatenate(indices)
    return len(flat), len(np.unique(flat))


def synthetic_codes(factors: np.ndarray, sizes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Codes of four kinds for factor class indices ``(N, K)``; five near-constant extra dims each."""
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
    }
    return {name: np.concatenate([codes, inactive], axis=1) for name, codes in kinds.items()}


def compare_dci(num_train: int) -> None:
    """DCI with both importance estimators on the same synthetic codes (dSprites factor sizes)."""
    from betavae.metrics import dci_from_codes

    sizes = DSprites.factor_sizes
    rng = np.random.default_rng(0)
    train = np.stack([rng.integers(0, s, num_train) for s in sizes], axis=1)
    test = np.stack([rng.integers(0, s, num_train // 2) for s in sizes], axis=1)
    codes_train, codes_test = synthetic_codes(train, sizes), synthetic_codes(test, sizes)
    print(f"DCI on synthetic codes, {num_train} train / {num_train // 2} test samples, dSprites factor sizes")
    print(f"{'codes':24s}{'importance':>19s}{'D':>7s}{'C':>7s}{'I test':>8s}{'seconds':>9s}")
    for kind in codes_train:
        for importance in ("gradient_boosting", "random_forest"):
            start = time.perf_counter()
            r = dci_from_codes(codes_train[kind], train, codes_test[kind], test, importance=importance)
            print(f"{kind:24s}{importance:>19s}{r['disentanglement']:7.3f}{r['completeness']:7.3f}"
                  f"{r['informativeness_test']:8.3f}{time.perf_counter() - start:9.1f}", flush=True)


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: less sensitive than wall time to other
    processes sharing the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a trained run directory (default: a fresh Burgess VAE on dSprites)")
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the protocol's sample counts")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--dci-importance", default="gradient_boosting", choices=("gradient_boosting", "random_forest"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice); 1 makes CPU "
                        "times comparable on a machine shared with other work")
    parser.add_argument("--compare-dci", type=int, metavar="N", help="instead: DCI with both importance "
                        "estimators on synthetic codes of N training samples (the docs' table uses 10000)")
    args = parser.parse_args(argv)
    if args.compare_dci:
        compare_dci(args.compare_dci)
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        import betavae
        from betavae.data import dataset_from_config
        from betavae.training.config import TrainConfig

        model, dataset = betavae.load(args.run), dataset_from_config(TrainConfig.load(args.run))
        source = args.run
    else:
        from betavae.models import build_model

        torch.manual_seed(0)
        model, dataset, source = build_model("burgess", 10, (1, 64, 64)).eval(), DSprites(), "fresh burgess VAE, z=10"
    encode = encoder_fn(model, batch_size=args.batch_size)
    params = scaled_params(args.scale, args.dci_importance)
    print(f"model: {source}; dataset: {dataset.name} ({len(dataset)} images); scale {args.scale}; "
          f"DCI importance {args.dci_importance}; torch threads {torch.get_num_threads()}")

    full_requested, full_distinct = draw_counts(dataset, scaled_params(1.0, args.dci_importance), args.seed)
    print(f"full protocol draws: {full_requested} images requested, {full_distinct} distinct "
          f"(encoder work ratio {full_requested / full_distinct:.2f}x)")

    load_before = os.getloadavg()[0]
    start, cpu = time.perf_counter(), cpu_seconds()
    cached = evaluate_with_details(encode, dataset, "all", args.seed, cache=True, batch_size=args.batch_size, params=params)
    cached_wall, cached_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    cached_peak = peak_rss_mb()
    start, cpu = time.perf_counter(), cpu_seconds()
    naive = evaluate_with_details(encode, dataset, "all", args.seed, cache=False, batch_size=args.batch_size, params=params)
    naive_wall, naive_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    naive_peak = peak_rss_mb()

    print(f"this scale: {cached.images_requested} images requested; encoded {cached.images_encoded} with the "
          f"cache, {naive.images_encoded} without ({cached.images_forwarded} and {naive.images_forwarded} "
          f"images through the encoder, counting last-batch padding)")
    print(f"\n{'':26s}{'cached s':>10s}{'naive s':>10s}")
    print(f"{'shared encoding':26s}{cached.encode_seconds:10.1f}{'-':>10s}")
    for name in cached.values:
        print(f"{name:26s}{cached.seconds[name]:10.1f}{naive.seconds[name]:10.1f}")
    print(f"{'wall (whole suite)':26s}{cached_wall:10.1f}{naive_wall:10.1f}")
    print(f"{'CPU, all threads':26s}{cached_cpu:10.1f}{naive_cpu:10.1f}")
    print(f"\nnaive / cached: wall time {naive_wall / cached_wall:.2f}x, CPU time {naive_cpu / cached_cpu:.2f}x "
          f"(1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores)")
    same = cached.values == naive.values
    print(f"identical values: {same}")
    if not same:
        diffs = [abs(cached.values[m][k] - naive.values[m][k]) for m in cached.values for k in cached.values[m]]
        print(f"largest difference: {max(diffs):.3g}")
    print(f"peak resident memory: {cached_peak:.0f} MB after the cached suite, {naive_peak:.0f} MB after both")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
