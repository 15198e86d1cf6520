"""Training throughput: betavae's own training loop against plain PyTorch loops of the same network.

Runs, in one process and interleaved round by round (so machine noise hits every variant alike):

- ``plain``             the textbook loop: NCHW tensors, Adam, Bernoulli NLL + β·KL, batch drawn from
                        float images held in memory;
- ``plain-cl``          the same with the channels-last memory format (model and batches);
- ``betavae``           ``betavae.train`` itself (bit-packed data on the device, logging every 100 steps,
                        no checkpoints or figures), images/s read from its own timing of the steps;

and prints images/s per variant (median over rounds), the achieved GFLOP/s (FLOPs counted by
PyTorch's FlopCounterMode on one training step) against a float32 matmul peak measured in the same
run, peak memory, and last the ratios of betavae to each plain variant.

    python benchmarks/train_throughput.py [--arch burgess] [--batch-size 64] [--steps 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import betavae
from betavae.data.dsprites import DSprites, render
from betavae.models import build_model
from betavae.objectives import kl_to_standard_normal


def plain_loop(images: torch.Tensor, arch: str, batch: int, steps: int, channels_last: bool, seed: int = 0) -> float:
    """Images/s of a plain PyTorch β-VAE loop (β = 4) over ``steps`` steps after 10 warm-up steps."""
    torch.manual_seed(seed)
    model = build_model(arch, 10, (1, 64, 64))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    n = images.shape[0]

    def step() -> None:
        x = images[torch.randint(n, (batch,))].contiguous(memory_format=fmt)
        mu, logvar = model.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy_with_logits(model.decode(z), x, reduction="sum") / batch
        kl = kl_to_standard_normal(mu, logvar).sum(1).mean()
        loss = recon + 4.0 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def betavae_loop(data: Path, arch: str, batch: int, steps: int) -> float:
    """Images/s of ``betavae.train`` on the same images, from its own logged step timing."""
    log_every = max(10, steps // 3)
    with tempfile.TemporaryDirectory() as tmp:
        config = betavae.TrainConfig(data=str(data), arch=arch, batch_size=batch, steps=steps + log_every, lr=5e-4,
                                     log_every=log_every, checkpoint_every=10 * steps, figures=False,
                                     out=str(Path(tmp) / "run"))
        import io

        run = betavae.train(config, stream=io.StringIO())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_second"] for r in records[1:])  # the first interval is warm-up


def flops_per_image(arch: str, batch: int) -> float:
    """Forward + backward FLOPs of one training step per image, counted by PyTorch."""
    model = build_model(arch, 10, (1, 64, 64))
    x = torch.rand(batch, 1, 64, 64)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        loss = F.binary_cross_entropy_with_logits(out.recon, x) + kl_to_standard_normal(out.mu, out.logvar).mean()
        loss.backward()
    return counter.get_total_flops() / batch


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.rand(size, size), torch.rand(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="burgess")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=16384, help="distinct dSprites images in memory")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images_u8 = render(DSprites().sample_factors(args.images, rng))  # (N, 64, 64) binary
    images = torch.from_numpy(images_u8).float().unsqueeze(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.npy"
        np.save(data, images_u8)
        results: dict[str, list[float]] = {"plain": [], "plain-cl": [], "betavae": []}
        peaks = []
        for _ in range(args.rounds):
            results["plain"].append(plain_loop(images, args.arch, args.batch_size, args.steps, channels_last=False))
            results["plain-cl"].append(plain_loop(images, args.arch, args.batch_size, args.steps, channels_last=True))
            results["betavae"].append(betavae_loop(data, args.arch, args.batch_size, args.steps))
            peaks.append(matmul_peak_gflops())

    flops = flops_per_image(args.arch, args.batch_size)
    peak = statistics.median(peaks)
    print(f"arch {args.arch}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"training FLOPs per image (forward + backward): {flops / 1e6:.1f} MFLOP")
    print(f"float32 matmul peak (2048^2): {peak:.1f} GFLOP/s")
    print(f"{'variant':<10} {'images/s (median)':>18} {'min':>8} {'max':>8} {'GFLOP/s':>8} {'% of peak':>9}")
    medians = {}
    for name, values in results.items():
        medians[name] = statistics.median(values)
        gflops = medians[name] * flops / 1e9
        print(f"{name:<10} {medians[name]:>18.0f} {min(values):>8.0f} {max(values):>8.0f} {gflops:>8.1f} "
              f"{100 * gflops / peak:>8.1f}%")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"ratio betavae / plain:    {medians['betavae'] / medians['plain']:.2f}")
    print(f"ratio betavae / plain-cl: {medians['betavae'] / medians['plain-cl']:.2f}")


if __name__ == "__main__":
    main()
