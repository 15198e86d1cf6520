"""How far the β-TCVAE estimates are from the truth, by the number of images q(z) is estimated over.

A shipped model's posteriors are encoded for batches of B images and for K more images of the
same data, all with the same (final) weights, and the minibatch-stratified estimates of the mutual
information, total correlation and dimension-wise KL are taken over the batch alone (K = 0, the
paper's estimator at that batch) and over the batch plus K remembered posteriors (``--tc-memory K``;
docs/objectives.md). As K approaches the dataset's N the estimate approaches the exact decomposition
(MI + TC + dimension-wise KL = the KL; TC, dimension-wise KL ≥ 0 and MI ≤ log N). Training
with a memory differs from this in one way: there the remembered posteriors lag the model by up to
K / B steps.

    python benchmarks/tc_estimate_bias.py                          # dsprites-fast-cpu, K up to 262,144
    python benchmarks/tc_estimate_bias.py --model dsprites-factor-cpu --memories 0,4096,65536

Prints, per K, the three estimates (mean over --repeats batches, with their spread) and the seconds
one estimate took on this machine (forward only, no gradient).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

import betavae
from betavae import reference
from betavae.data import dataset_from_config
from betavae.objectives.gaussian import kl_to_standard_normal
from betavae.objectives.tc_vae import tc_decomposition


def encode(model: torch.nn.Module, dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    mus, logvars = [], []
    with torch.inference_mode():
        for start in range(0, len(indices), 1024):
            x = torch.from_numpy(dataset.images(np.sort(indices[start : start + 1024])))
            mu, logvar = model.encode(x)
            mus.append(mu)
            logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="dsprites-fast-cpu", help="a shipped reference model (betavae reference)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--memories", default="0,512,2048,8192,32768,131072,262144",
                        help="comma-separated K: remembered posteriors besides the batch")
    parser.add_argument("--repeats", type=int, default=8, help="batches estimated per K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    memories = [int(k) for k in args.memories.split(",")]
    model = reference.load(args.model)
    dataset = dataset_from_config(betavae.TrainConfig.load(reference.path(args.model)))
    n = len(dataset)
    rng = np.random.default_rng(args.seed)
    needed = args.repeats * args.batch_size + max(memories)
    if needed > n:
        raise SystemExit(f"--memories up to {max(memories):,} and {args.repeats} batches need {needed:,} images; "
                         f"the dataset has {n:,}.")
    started = time.perf_counter()
    mu, logvar = encode(model, dataset, rng.permutation(n)[:needed])
    print(f"{args.model}: {needed:,} images of {n:,} encoded in {time.perf_counter() - started:.1f} s; "
          f"batch {args.batch_size}, {args.repeats} batches per K, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; log N = {math.log(n):.2f} nats")
    memory_mu, memory_logvar = mu[args.repeats * args.batch_size:], logvar[args.repeats * args.batch_size:]
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for r in range(args.repeats):
        rows = slice(r * args.batch_size, (r + 1) * args.batch_size)
        eps = torch.randn(mu[rows].shape, generator=generator)
        batches.append((mu[rows] + eps * torch.exp(0.5 * logvar[rows]), mu[rows], logvar[rows]))
    kl = statistics.fmean(float(kl_to_standard_normal(m, lv).sum(1).mean()) for _, m, lv in batches)
    print(f"KL (analytic, mean over the batches): {kl:.2f} nats; true values: TC >= 0, dimension-wise KL >= 0, "
          f"MI <= min(KL, log N)\n")
    print(f"{'K':>8} {'MI':>7} {'±':>5} {'TC':>7} {'±':>5} {'dwKL':>7} {'±':>5} {'seconds':>8}")
    for k in memories:
        terms, seconds = [], []
        for z, m, lv in batches:
            tick = time.perf_counter()
            with torch.no_grad():
                estimate = tc_decomposition(z, m, lv, n, "mss", memory_mu[:k] if k else None,
                                            memory_logvar[:k] if k else None)
            seconds.append(time.perf_counter() - tick)
            terms.append([float(t) for t in estimate])
        columns = list(zip(*terms))
        cells = " ".join(f"{statistics.fmean(c):>7.2f} {statistics.pstdev(c):>5.2f}" for c in columns)
        print(f"{k:>8,} {cells} {statistics.median(seconds):>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
