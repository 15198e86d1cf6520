"""Training throughput: betavae's own training loop against plain PyTorch loops of the same network.

Runs, in one process and interleaved round by round (so machine noise hits every variant alike), for
every batch size of ``--batch-sizes`` and every thread count of ``--threads``:

- ``plain``             the textbook loop: NCHW tensors, fp32, ``nn.ReLU()`` and ``torch.optim.Adam``
                        with PyTorch's defaults, Bernoulli NLL + β·KL, the batch gathered from float
                        images held on the device;
- ``plain-cl``          the same with the channels-last memory format (model and batches);
- ``plain-tuned``       channels-last, ReLU in place and Adam's fused kernel: the fastest plain loop
                        found (the three changes that betavae's own step makes);
- ``betavae``           ``betavae.train`` itself (bit-packed data on the device, logging every ``n/3``
                        steps, no checkpoints or figures) with ``--precision`` and ``--compile``; its
                        images/s are read from its own timing of the steps (the first logged interval,
                        warm-up and compilation, left out).

With ``--recipe NAME`` the betavae variants train that recipe (its objective, net, learning rate and
every other value it sets; batch size, precision and compile as given here) and the plain loops, which
know the β-VAE only, are left out: e.g. FactorVAE's step, discriminator included, in fp32 against bf16.

Every variant trains the same number of images (``--images-per-run``) per round. Printed: images/s per
variant (median over rounds, min and max), the achieved GFLOP/s (FLOPs counted by PyTorch's
FlopCounterMode on one training step) against a matrix-product peak of the variant's own dtype
measured in the same run, peak memory, the time the standard budget (300,000 steps of batch 64: 19.2
million images) takes at the best rate, and last the ratios: betavae against the plain default loop
(batch 64 if measured, default threads), against the best plain variant found and, with several
``--precision`` values, at each later one against the first; each the median of the ratios of the rounds
(the two variants of a ratio ran close together in time, so slow spells of a shared machine cancel out).

    python benchmarks/train_throughput.py                                  # CPU, batch 64
    python benchmarks/train_throughput.py --batch-sizes 64,256 --threads 1,2 --rounds 3
    python benchmarks/train_throughput.py --arch locatello --precision fp32,bf16   # bf16 against fp32 on this CPU
    python benchmarks/train_throughput.py --device cuda --batch-sizes 64,256,1024 --compile cudagraphs
    python benchmarks/train_throughput.py --recipe dlib-factor --precision fp32,bf16 --threads 2
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import betavae
from betavae.data.dsprites import DSprites, render
from betavae.errors import ConfigError
from betavae.models import build_model
from betavae.models.vae import VAEOutput
from betavae.objectives import build_objective, kl_to_standard_normal
from betavae.training.config import PRECISIONS
from betavae.training.recipes import RECIPES, recipe_values
from betavae.training.loop import arithmetic, check_precision, matmul_arithmetic, resolve_device

LOOPS = ("plain", "plain-cl", "plain-tuned", "betavae")
STANDARD_BUDGET = 300_000 * 64  # images: disentanglement_lib's 300,000 steps of batch 64


@dataclass(frozen=True)
class Variant:
    loop: str  # plain, plain-cl, plain-tuned or betavae
    batch: int
    threads: int
    precision: str = "fp32"  # betavae's --precision; the plain loops are fp32

    @property
    def label(self) -> str:
        suffix = f" {self.precision}" if self.loop == "betavae" else ""
        return f"{self.loop}{suffix} b{self.batch} t{self.threads}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(images: torch.Tensor, arch: str, batch: int, images_per_run: int, variant: str,
               device: torch.device, seed: int = 0) -> float:
    """Images/s of a plain PyTorch β-VAE loop (β = 4) after 10 warm-up steps."""
    torch.manual_seed(seed)
    model = build_model(arch, 10, (1, 64, 64))
    tuned = variant == "plain-tuned"
    for module in model.modules():  # betavae's nets use ReLU in place; a plain loop has PyTorch's default
        if isinstance(module, torch.nn.ReLU):
            module.inplace = tuned
    fmt = torch.contiguous_format if variant == "plain" else torch.channels_last
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, fused=True if tuned else None)
    n = images.shape[0]
    steps = max(1, images_per_run // batch)

    def step() -> None:
        x = images[torch.randint(n, (batch,), device=device)].contiguous(memory_format=fmt)
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
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def betavae_loop(data: Path, arch: str, batch: int, images_per_run: int, device: str, precision: str,
                 compile_mode: str, recipe: str | None = None) -> float:
    """Images/s of ``betavae.train`` on the same images, from its own logged step timing."""
    log_every = max(10, images_per_run // batch // 3)  # whole intervals only: the median is over like ones
    values = {**recipe_values(recipe), "arch": arch} if recipe else {"arch": arch, "lr": 5e-4}
    with tempfile.TemporaryDirectory() as tmp:
        config = betavae.TrainConfig(**{**values, "data": str(data), "batch_size": batch, "steps": 4 * log_every,
                                        "log_every": log_every, "checkpoint_every": 100 * log_every, "figures": False,
                                        "device": device, "precision": precision, "compile": compile_mode,
                                        "out": str(Path(tmp) / "run")})
        run = betavae.train(config, stream=io.StringIO())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_second"] for r in records[1:])  # the first interval is warm-up


def flops_per_image(arch: str, batch: int, recipe: str | None = None) -> float:
    """Forward + backward FLOPs of one training step per image, counted by PyTorch: the β-VAE's, or with
    ``recipe`` its objective's (FactorVAE's discriminator passes and its own step included)."""
    config = betavae.recipe_config(recipe, arch=arch) if recipe else None
    model = build_model(arch, 10, (1, 64, 64)) if config is None else \
        build_model(config.arch, config.latents, (1, 64, 64), config.width)
    x = torch.rand(batch, 1, 64, 64)
    objective = None if config is None else build_objective(config, 737_280)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if objective is None:
            loss = F.binary_cross_entropy_with_logits(out.recon, x) + kl_to_standard_normal(out.mu, out.logvar).mean()
            loss.backward()
        else:
            output = VAEOutput(mu=out.mu, logvar=out.logvar, z=out.z, recon=out.recon)
            loss, _ = objective(output, x, 0)
            loss.backward()
            objective.update_auxiliary(output, x, 0)
    return counter.get_total_flops() / batch


def matmul_peak_gflops(device: torch.device, kind: str, size: int = 2048, repeats: int = 10) -> float:
    """Achieved GFLOP/s of a square matrix product on ``device`` in the arithmetic ``kind`` (the run's own peak)."""
    if device.type == "cuda":
        size, repeats = 8192, 50
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    a = torch.rand(size, size, device=device, dtype=dtype)
    b = torch.rand(size, size, device=device, dtype=dtype)
    with matmul_arithmetic(kind):
        a @ b
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def peak_memory_mib(device: torch.device) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB on the GPU, {rss:.0f} MiB resident"
    return f"{rss:.0f} MiB resident"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("burgess", "locatello"),
                        help="the net (default: burgess, or the recipe's own net with --recipe)")
    parser.add_argument("--recipe", choices=tuple(RECIPES),
                        help="the betavae variants train this recipe's objective and settings; no plain loops")
    parser.add_argument("--batch-sizes", default="64", help="comma-separated batch sizes (default: 64)")
    parser.add_argument("--threads", default="", help="comma-separated torch CPU thread counts (default: torch's)")
    parser.add_argument("--images-per-run", type=int, default=19200,
                        help="images each variant trains per round (default: 19,200, 300 steps of batch 64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=16384, help="distinct dSprites images in memory")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--precision", default="auto",
                        help="betavae's --precision: auto, fp32, tf32 (CUDA) or bf16, or several comma-separated "
                             "(each a variant of its own, and their ratio printed); the plain loops are fp32")
    parser.add_argument("--compile", default="off", choices=("off", "on", "cudagraphs"), help="betavae's --compile")
    args = parser.parse_args()

    device = resolve_device(args.device)
    recipe = args.recipe
    arch = args.arch or (betavae.recipe_config(recipe).arch if recipe else "burgess")
    loops = ("betavae",) if recipe else LOOPS
    batches = _ints(args.batch_sizes)
    default_threads = torch.get_num_threads()
    threads = _ints(args.threads) or [default_threads]
    precisions = [p for p in args.precision.split(",") if p]
    if not precisions or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precision takes {', '.join(PRECISIONS)}, or several of them comma-separated; got {args.precision!r}")
    for precision in precisions:
        try:
            check_precision(precision, device)
        except ConfigError as error:
            parser.error(str(error))
    variants = [Variant(loop, b, t, precision) for t in threads for b in batches for loop in loops
                for precision in (precisions if loop == "betavae" else ["fp32"])]

    rng = np.random.default_rng(0)
    images_u8 = render(DSprites().sample_factors(args.images, rng))  # (N, 64, 64) binary
    images = torch.from_numpy(images_u8).float().unsqueeze(1).to(device)
    results: dict[Variant, list[float]] = {v: [] for v in variants}
    kinds = {p: arithmetic(p, device) for p in ["fp32", *precisions]}
    peaks: dict[str, list[float]] = {kind: [] for kind in kinds.values()}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.npy"
        np.save(data, images_u8)
        for _ in range(args.rounds):
            for v in variants:
                torch.set_num_threads(v.threads)
                if v.loop == "betavae":
                    speed = betavae_loop(data, arch, v.batch, args.images_per_run, str(device),
                                         v.precision, args.compile, recipe)
                else:
                    speed = plain_loop(images, arch, v.batch, args.images_per_run, v.loop, device)
                results[v].append(speed)
            torch.set_num_threads(default_threads)
            for kind, measured in peaks.items():
                measured.append(matmul_peak_gflops(device, kind))

    flops = flops_per_image(arch, batches[0], recipe)
    peak = {kind: statistics.median(measured) for kind, measured in peaks.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    trained = f"recipe {recipe} ({RECIPES[recipe].summary}), " if recipe else ""
    print(f"{trained}arch {arch} on {device} ({where}), {args.images_per_run:,} images per variant x {args.rounds} rounds, "
          f"torch {torch.__version__}; betavae precision {args.precision}, compile {args.compile}")
    print(f"training FLOPs per image (forward + backward): {flops / 1e6:.1f} MFLOP")
    for kind, gflops in peak.items():
        print(f"{kind} matmul peak: {gflops:.1f} GFLOP/s")
    print(f"{'variant':<20} {'images/s (median)':>18} {'min':>8} {'max':>8} {'GFLOP/s':>8} {'% of peak':>9}")
    medians = {v: statistics.median(values) for v, values in results.items()}
    for v, values in results.items():
        gflops = medians[v] * flops / 1e9
        print(f"{v.label:<20} {medians[v]:>18.0f} {min(values):>8.0f} {max(values):>8.0f} {gflops:>8.1f} "
              f"{100 * gflops / peak[kinds[v.precision]]:>8.1f}%  {kinds[v.precision]}")
    print(f"peak memory: {peak_memory_mib(device)}")
    best_betavae = max((v for v in variants if v.loop == "betavae"), key=medians.get)
    minutes = STANDARD_BUDGET / medians[best_betavae] / 60
    print(f"standard budget (300,000 steps x 64 = 19.2 M images) at {best_betavae.label}'s rate: {minutes:,.1f} minutes")
    default = Variant("plain", 64 if 64 in batches else batches[0],
                      default_threads if default_threads in threads else threads[-1])
    same = Variant("betavae", default.batch, default.threads, precisions[0])
    # Ratios round by round (the two ran minutes apart at most), then their median: drifts in the
    # machine's speed between rounds cancel out of each pair.
    pairs = [(Variant("betavae", default.batch, default.threads, p), same, f"betavae at {precisions[0]}")
             for p in precisions[1:]]
    if not recipe:
        best_plain = max((v for v in variants if v.loop != "betavae"), key=medians.get)
        print(f"best plain variant: {best_plain.label}; best betavae: {best_betavae.label}")
        pairs = [(same, default, "the plain default loop"), (best_betavae, best_plain, "the best plain variant"), *pairs]
    for a, b, what in pairs:
        ratios = [x / y for x, y in zip(results[a], results[b])]
        print(f"ratio {a.label} / {b.label} ({what}): {statistics.median(ratios):.2f} "
              f"(median of {len(ratios)} rounds, {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
