"""Time to disentanglement: train recipes for a wall-time budget and score them at fixed times.

For each recipe and seed, ``betavae.train`` runs with ``time_limit`` set to the first checkpoint
time; the model is then scored, and the run is resumed up to the next checkpoint time, and so on.
The clock counts training only (the run's own cumulative ``elapsed_seconds``): scoring pauses it.
At every checkpoint it records the steps and images trained, MIG (disentanglement_lib protocol,
mean codes, 10,000 fresh factor samples, 20 bins), the FactorVAE score (protocol definition with
fewer votes, see ``--factor-votes``), the reconstruction NLL (Bernoulli, nats per image, of the
posterior means decoded, on 2,048 images drawn with the evaluation seed) and the active latent
dimensions (KL ≥ 0.1 nats over the last logging interval), the turn of the code (the largest angle, 0–45°,
between two dims and the two ordered factors they follow, as the report measures it: x and y on dSprites;
a β-VAE leaves it to chance, and MIG falls fast as it grows), which factors the reconstructions show (on a full
factor grid: the share of 1,000 images whose reconstruction is nearer the input than every image that differs
from it in that factor alone, ``reconstructed_factors`` of docs/metrics.md, one percentage per factor in the
dataset's order), and for total-correlation objectives their own
minibatch estimates of the total correlation and the dimension-wise KL at the last log (both are ≥ 0 in
truth; a negative estimate is the estimator's bias at the batch size used). Every score uses the same seed and
samples for every recipe, and only the trained model: no factor label is seen in training.

    python benchmarks/time_to_disentangle.py                       # default vs fast-cpu, 30 min, seed 0
    python benchmarks/time_to_disentangle.py --seeds 0,1,2 --minutes 5,10,20,30 --out bench-runs
    python benchmarks/time_to_disentangle.py --recipes fast-cpu,fast-cpu+lr_schedule=constant,fast-cpu+steps=12000

A recipe may carry config values that win over it, ``NAME+FIELD=VALUE+...`` (a candidate recipe
measured beside the named ones; VALUE is read as JSON where it parses, else as text).

The table's last lines give, per recipe, the median over seeds at each checkpoint time. A recipe whose
own ``--steps`` end before a checkpoint time (fast-cpu's 8,000 steps take about 6 minutes on an idle
2-core CPU) is scored once more at its end, and its final model stands for the later times (``min``
then exceeds ``train_minutes``).

Subnormal floats are flushed to zero, as ``betavae train`` does; ``--keep-denormals`` keeps them (figures in
docs/recipes.md measured before betavae flushed them were taken so, and a run then slows as they build up).

``--continue`` trains further the runs already under ``--out``: an interrupted benchmark, or one that stopped
at fewer minutes. Each run resumes from its last checkpoint (training is resumed exactly, so the figures are
those of one uninterrupted run), and the times it had already passed are not scored again.

    python benchmarks/time_to_disentangle.py --recipes dlib-factor --seeds 1 --minutes 10 --out bench-runs
    python benchmarks/time_to_disentangle.py --recipes dlib-factor --seeds 1 --minutes 10,20,30 --out bench-runs --continue
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

import betavae
from betavae.data import dataset_from_config
from betavae.errors import ConfigError
from betavae.metrics.factor_vae import factor_vae_score
from betavae.metrics.mig import mig
from betavae.metrics.run import encoder_fn
from betavae.objectives.likelihoods import reconstruction_nll
from betavae.report.analysis import code_factor_information, factors_in_reconstructions
from betavae.training.logging import read_metrics
from betavae.training.config import recipe_config
from betavae.training.recipes import RECIPES


def reconstruction(model: torch.nn.Module, images: np.ndarray) -> float:
    """Mean Bernoulli NLL (nats per image) of ``images`` decoded from their posterior means."""
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(images), 512):
            x = torch.from_numpy(images[start : start + 512].astype(np.float32))
            mu, _ = model.encode(x)
            total += float(reconstruction_nll(model.decode(mu), x, "bernoulli").sum())
    return total / len(images)


def score(run: Path, seed: int, factor_votes: int, recon_images: np.ndarray) -> dict[str, float]:
    config = betavae.TrainConfig.load(run)
    dataset = dataset_from_config(config)
    model = betavae.load(run)
    encode = encoder_fn(model)
    last = read_metrics(run)[-1]
    started = time.perf_counter()
    result = {
        "steps": last["step"],
        "images": last["step"] * config.batch_size,
        "train_minutes": last["elapsed_seconds"] / 60,
        "mig": mig(dataset, encode, seed)["mig"],
        "factor_vae": factor_vae_score(dataset, encode, seed, num_train=factor_votes,
                                       num_eval=max(1, factor_votes // 2))["eval_accuracy"],
        "recon": reconstruction(model, recon_images),
        "active": last["active_dims"],
        "turn": max((p["angle"] for p in code_factor_information(model, dataset, seed=seed).pair_angles()),
                    default=float("nan")),
        "shown": tuple(r["accuracy"] for r in factors_in_reconstructions(model, dataset, seed=seed))
        if dataset.is_full_grid else (),
        # the total-correlation objectives' own minibatch estimates at the last log (true values are >= 0)
        "tc_estimate": last.get("total_correlation", float("nan")),
        "dwkl_estimate": last.get("dimension_wise_kl", float("nan")),
    }
    result["score_seconds"] = time.perf_counter() - started
    return result


def parse_recipe(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME+FIELD=VALUE+...``: a recipe and the config values that win over it."""
    name, *pairs = spec.split("+")
    if name not in RECIPES:
        raise ValueError(f"unknown recipe '{name}' in '{spec}'; known: {', '.join(RECIPES)}")
    known = {f.name for f in fields(betavae.TrainConfig)}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"'{pair}' in '{spec}' is not FIELD=VALUE with a TrainConfig field")
        try:
            overrides[key] = json.loads(text)
        except ValueError:
            overrides[key] = text
    return name, overrides


def run_recipe(spec: str, seed: int, minutes: list[float], out: Path, factor_votes: int,
               recon_images: np.ndarray) -> list[dict[str, float]]:
    name, overrides = parse_recipe(spec)
    run = out / f"{re.sub(r'[^A-Za-z0-9._-]', '_', spec)}-seed{seed}"
    rows = []
    # --continue: a run already here goes on from where it stopped; the times it has passed are not scored again
    logged = read_metrics(run) if run.exists() else []
    done = (logged[-1]["elapsed_seconds"] / 60 if logged else 0.0) if run.exists() else None
    for i, limit in enumerate(minutes):
        if done is not None and limit <= done + 1e-3:
            continue
        if done is None and i == 0:
            config = recipe_config(name, **{**overrides, "seed": seed, "out": str(run), "figures": False,
                                            "time_limit": limit})
            betavae.train(config, stream=io.StringIO())
        elif read_metrics(run) and read_metrics(run)[-1]["step"] >= betavae.TrainConfig.load(run).steps:
            # the recipe's own --steps ended before this time: its final model stands for the later times
            if rows:
                row = {**rows[-1], "minutes": limit}
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
                rows.append(row)
                continue
            # (a continued run that had already ended: its final model is scored once, below)
        else:
            betavae.resume(run, time_limit=limit, stream=io.StringIO())
        row = {"recipe": spec, "seed": seed, "minutes": limit, **score(run, 1000, factor_votes, recon_images)}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], title: str, factor_names: tuple[str, ...] = ()) -> None:
    w = max(10, *(len(str(r["recipe"])) for r in rows))
    print(f"\n{title}")
    if factor_names:
        print(f"shown %: the reconstructions show {' / '.join(factor_names)}")
    print(f"{'recipe':<{w}} {'seed':>4} {'min':>5} {'trained':>7} {'steps':>7} {'images':>10} {'MIG':>6} "
          f"{'FactorVAE':>9} {'recon':>7} {'active':>6} {'turn°':>5} {'TC est':>7} {'dwKL est':>8}  shown %")
    for r in rows:
        shown = "/".join(f"{100 * v:.0f}" for v in r.get("shown", ())) or "-"
        print(f"{r['recipe']:<{w}} {r['seed']!s:>4} {r['minutes']:>5g} {r['train_minutes']:>7.1f} {r['steps']:>7.0f} "
              f"{r['images']:>10,.0f} {r['mig']:>6.3f} {r['factor_vae']:>9.3f} {r['recon']:>7.1f} {r['active']:>6.0f} "
              f"{r['turn']:>5.0f} {r['tc_estimate']:>7.2f} {r['dwkl_estimate']:>8.2f}  {shown}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="default,fast-cpu", help=f"comma-separated, of: {', '.join(RECIPES)}; each may add +FIELD=VALUE config values")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    parser.add_argument("--minutes", default="5,10,20,30", help="checkpoint times, minutes of training (default: 5,10,20,30)")
    parser.add_argument("--factor-votes", type=int, default=1000,
                        help="FactorVAE score training votes (half as many evaluation votes; the protocol uses "
                             "10,000 and 5,000, which costs ~1M encoded images per checkpoint) (default: 1000)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default="runs/time-to-disentangle",
                        help="where the runs go; must not exist, unless --continue")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="train further the runs already under --out (an interrupted benchmark, or one run to "
                             "fewer minutes): each goes on from its last checkpoint, and the times it has passed "
                             "are not scored again")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="keep subnormal floats, as betavae did before it flushed them (a slower CPU run, to "
                             "compare with figures measured then; benchmarks/cpu_denormals.py)")
    args = parser.parse_args()
    if args.keep_denormals:  # train as betavae did before it flushed them
        from betavae.training import loop

        loop.flush_denormals = lambda: False
    else:
        betavae.flush_denormals()  # as the command line does: before the first parallel operation
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not args.resume:
        print(f"{out} exists; pass another --out (earlier runs are kept), or --continue to train its runs further.",
              file=sys.stderr)
        return 2
    if args.resume and not out.is_dir():
        print(f"--continue: {out} is not a directory of earlier runs; leave out --continue to start them.",
              file=sys.stderr)
        return 2
    recipes = args.recipes.split(",")
    try:
        for spec in recipes:
            name, overrides = parse_recipe(spec)
            recipe_config(name, **overrides).validate()
    except (ValueError, ConfigError) as exc:
        print(exc, file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    minutes = sorted(float(m) for m in args.minutes.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; subnormals {'kept' if args.keep_denormals else 'flushed'}; "
          f"recipes {recipes}, seeds {seeds}, minutes {minutes}", flush=True)
    dataset = dataset_from_config(recipe_config(parse_recipe(recipes[0])[0]))
    rng = np.random.default_rng(1000)
    recon_images = np.asarray(dataset.images_from_factors(dataset.sample_factors(2048, rng)), dtype=np.float32)
    rows = []
    for seed in seeds:  # seeds outermost: an interrupted run still compares the recipes
        for name in recipes:
            rows += run_recipe(name, seed, minutes, out, args.factor_votes, recon_images)
    names = tuple(dataset.factor_names) if getattr(dataset, "is_full_grid", False) else ()
    print_table(rows, "every run", names)
    medians = []
    for name in recipes:
        for limit in minutes:
            group = [r for r in rows if r["recipe"] == name and r["minutes"] == limit]
            if not group:  # every run had passed this time before --continue
                continue
            medians.append({"recipe": name, "seed": "med", "minutes": limit,
                            **{k: statistics.median(r[k] for r in group)
                               for k in ("train_minutes", "steps", "images", "mig", "factor_vae", "recon", "active",
                                          "turn", "tc_estimate", "dwkl_estimate")},
                            "shown": tuple(statistics.median(values) for values in zip(*(r["shown"] for r in group)))})
    print_table(medians, f"median over seeds {seeds}", names)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory {peak:.0f} MB; load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
