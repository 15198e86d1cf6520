"""How much of each factor a trained code holds, all its dims together: a classifier probe on the mean codes.

Mutual information of one dim at a time with a factor (MIG, the report's heatmap) misses a factor that a
code spreads over several dims; dSprites' shape is one (docs/recipes.md). This probe encodes ``--images``
images drawn at random (posterior means), trains a small classifier per factor on two thirds of the codes
(two hidden layers of 256 ReLU units, Adam lr 1e-3, ``--epochs`` passes, codes standardised on the training
part) and prints its accuracy on the other third, per factor, with the accuracy per value of factors of at
most ``--per-value`` values and the share of the most common value (what always guessing it scores).

    python benchmarks/code_probe.py src/betavae/reference/dsprites-broadcast-factor
    python benchmarks/code_probe.py runs/b4 --images 6000 --factors shape

It reads the run and writes nothing. On 2 CPU threads 12,000 images and 60 epochs take about 10 s a factor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import betavae
from betavae.data import dataset_from_config
from betavae.data.base import FactorDataset
from betavae.report.analysis import sample_codes


def probe(codes: np.ndarray, labels: np.ndarray, classes: int, epochs: int, seed: int) -> np.ndarray:
    """Predicted labels of the last third of ``codes`` by a classifier trained on the first two thirds."""
    n_train = 2 * len(codes) // 3
    mean, std = codes[:n_train].mean(0), codes[:n_train].std(0) + 1e-6
    x = torch.tensor((codes - mean) / std, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.long)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, classes))
    optimiser = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        order = torch.randperm(n_train)
        for start in range(0, n_train, 256):
            batch = order[start:start + 256]
            loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return net(x[n_train:]).argmax(1).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run directory (or a shipped reference model's folder)")
    parser.add_argument("--images", type=int, default=12_000, help="images encoded (default: 12,000)")
    parser.add_argument("--epochs", type=int, default=60, help="passes over the training codes (default: 60)")
    parser.add_argument("--factors", default=None, help="comma-separated factor names (default: every factor)")
    parser.add_argument("--per-value", type=int, default=3,
                        help="show the accuracy per value of factors with at most this many values (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images drawn and the classifiers")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    model = betavae.load(run)
    dataset = dataset_from_config(betavae.TrainConfig.load(run))
    if not isinstance(dataset, FactorDataset):
        print(f"{run}'s data has no factor labels; a probe needs them.", file=sys.stderr)
        return 2
    names = list(dataset.factor_names) if args.factors is None else args.factors.split(",")
    unknown = [f for f in names if f not in dataset.factor_names]
    if unknown:
        print(f"unknown factor(s) {unknown}; {run}'s data has {', '.join(dataset.factor_names)}.", file=sys.stderr)
        return 2
    if args.images < 30:
        print("--images must be at least 30 (a third of them is the test set).", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    codes, factors = sample_codes(model, dataset, args.images, rng)
    order = rng.permutation(args.images)  # sample_codes sorts by index: the split must not follow the grid's order
    codes, factors = codes[order], factors[order]
    print(f"{run}: {args.images:,} images, {codes.shape[1]} dims; classifier trained on "
          f"{2 * args.images // 3:,}, tested on {args.images - 2 * args.images // 3:,}")
    for name in names:
        k = dataset.factor_names.index(name)
        size = dataset.factor_sizes[k]
        labels = factors[:, k]
        predicted = probe(codes, labels, size, args.epochs, args.seed)
        truth = labels[2 * args.images // 3:]
        most_common = np.bincount(truth, minlength=size).max() / len(truth)
        line = f"  {name:<12} accuracy {100 * (predicted == truth).mean():5.1f}%   most common value {100 * most_common:5.1f}%"
        if size <= args.per_value:
            line += "   per value " + " ".join(f"{100 * (predicted[truth == v] == v).mean():.1f}%" for v in range(size)
                                              if (truth == v).any())
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
