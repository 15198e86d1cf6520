"""The standard budget on a GPU: the published dSprites models trained side by side, then evaluated in full.

Trains the disentanglement_lib study's settings (its conv net, z = 10, batch 64, Adam lr 1e-4, 300,000
steps; Locatello et al. 2019) for five models, each in its own process on the same device, all at once:

- ``beta1``, ``beta4``, ``beta16``: β-VAE with β = 1 (the plain VAE), 4 and 16 (recipe ``dlib-beta``);
- ``tc``: β-TCVAE, β = 6, minibatch weighted sampling (recipe ``dlib-tc``);
- ``factor``: FactorVAE, γ = 40, discriminator lr 1e-4 (recipe ``dlib-factor``).

Each model then gets ``betavae evaluate`` (the full protocol: every metric family, mean codes). The
table printed at the end sets each model's steps, reconstruction and scores beside the figures
published for it (docs/recipes.md gives the sources). ``--minutes`` stops every model after
that many minutes of training instead (the table then says how far each got). Everything stays in
``--out``: one run directory per model (config, metrics.jsonl, checkpoints, model, evaluation.json),
the logs and ``summary.json``.

With ``--compile cudagraphs`` a model whose compiled run fails is trained again uncompiled for the time
left, and the table says so.

    python benchmarks/standard_budget.py --out gpu-runs                        # the whole budget
    python benchmarks/standard_budget.py --out gpu-runs --minutes 6 --compile cudagraphs
    python benchmarks/standard_budget.py --out cpu-check --models beta4 --steps 300 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from betavae.reference import summary_values
from betavae.training.logging import read_metrics

#: name -> (recipe, flags that win over it)
MODELS: dict[str, tuple[str, list[str]]] = {
    "beta1": ("dlib-beta", ["--beta", "1"]),
    "beta4": ("dlib-beta", ["--beta", "4"]),
    "beta16": ("dlib-beta", ["--beta", "16"]),
    "tc": ("dlib-tc", []),
    "factor": ("dlib-factor", []),
}

#: Published dSprites figures per model (REFERENCE.md's sources): metric -> (value, source). The
#: BetaVAE score of Higgins et al. 2017 comes from their own protocol, the others from the
#: disentanglement_lib one or close to it; "best reported" figures are the best of many seeds.
PUBLISHED: dict[str, dict[str, tuple[str, str]]] = {
    "beta1": {"beta_vae": ("0.616", "Higgins et al. 2017 (VAE)")},
    "beta4": {"beta_vae": ("0.992", "Higgins et al. 2017"),
              "factor_vae": ("0.70", "Kim & Mnih 2018"),
              "mig": ("0.21", "best reported β-VAE, Lin et al. 2020 Table 1"),
              "sap": ("0.55", "best reported β-VAE, Lin et al. 2020 Table 1"),
              "dci": ("0.41", "best reported β-VAE, Lin et al. 2020 Table 1")},
    "beta16": {"mig": ("0-0.4", "range over 50 seeds of every method, Locatello et al. 2019")},
    "tc": {"mig": ("0.45", "Chen et al. 2018, as compiled by Lin et al. 2020"),
           "elbo": ("-85.5", "pythae's reproduced β-TCVAE")},
    "factor": {"factor_vae": ("0.82", "Kim & Mnih 2018"),
               "mig": ("0.40-0.43", "Lin et al. 2020 Table 1"),
               "dci": ("0.70-0.74", "Lin et al. 2020 Table 1")},
}

#: table column -> the headline value's name in ``betavae.reference.summary_values``
SCORES = {"beta_vae": "BetaVAE score", "factor_vae": "FactorVAE score", "mig": "MIG", "sap": "SAP",
          "dci": "DCI disentanglement"}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def train_command(name: str, run: Path, args: argparse.Namespace, compile_mode: str,
                  minutes: float | None) -> list[str]:
    recipe, extra = MODELS[name]
    command = [sys.executable, "-m", "betavae", "train", "--recipe", recipe, *extra, "--out", str(run),
               "--seed", str(args.seed), "--steps", str(args.steps), "--device", args.device,
               "--precision", args.precision, "--compile", compile_mode, "--log-every", str(args.log_every),
               "--checkpoint-every", str(args.checkpoint_every), "--no-figures"]
    if minutes is not None:
        command += ["--time-limit", f"{minutes:.4f}"]
    return command


def child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1"}


def train_all(args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    """Train every model at once, each in its own process; retry a failed compiled run uncompiled."""
    logs = out / "logs"
    started = time.perf_counter()
    deadline = None if args.minutes is None else started + args.minutes * 60
    state: dict[str, dict[str, Any]] = {}
    for name in args.models:
        log = (logs / f"{name}-train.log").open("w")
        command = train_command(name, out / name, args, args.compile, args.minutes)
        state[name] = {"compile": args.compile, "log": log, "attempts": 1,
                       "process": subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                   env=child_env(args.threads))}
    say(f"training {', '.join(args.models)} at once on {args.device} (compile {args.compile}, "
        f"{'the whole budget' if args.minutes is None else f'{args.minutes:g} minutes each'})")
    running = set(state)
    while running:
        time.sleep(2)
        for name in sorted(running):
            entry = state[name]
            rc = entry["process"].poll()
            if rc is None:
                continue
            entry["log"].flush()
            left = None if deadline is None else (deadline - time.perf_counter()) / 60
            if rc != 0 and entry["compile"] != "off" and (left is None or left > 0.5):
                tail = (logs / f"{name}-train.log").read_text()[-1500:]
                say(f"{name}: the compiled run failed (exit {rc}); training it again uncompiled"
                    + ("" if left is None else f" for the {left:.1f} minutes left") + f". Its log ends:\n{tail}")
                entry["log"].close()
                if (out / name).exists():
                    shutil.move(out / name, out / f"{name}-failed-compiled")
                log = (logs / f"{name}-train-uncompiled.log").open("w")
                entry.update(compile="off", log=log, attempts=2, process=subprocess.Popen(
                    train_command(name, out / name, args, "off", left), stdout=log, stderr=subprocess.STDOUT,
                    env=child_env(args.threads)))
                continue
            entry["rc"] = rc
            entry["seconds"] = time.perf_counter() - started
            entry["log"].close()
            running.discard(name)
            say(f"{name}: training ended (exit {rc}) after {entry['seconds']:.0f} s")
    return state


def evaluate_all(args: argparse.Namespace, out: Path, names: list[str]) -> dict[str, int]:
    """``betavae evaluate`` for each trained model, ``--eval-workers`` at a time."""
    pending, running, codes = list(names), {}, {}
    while pending or running:
        while pending and len(running) < args.eval_workers:
            name = pending.pop(0)
            log = (out / "logs" / f"{name}-evaluate.log").open("w")
            command = [sys.executable, "-m", "betavae", "evaluate", str(out / name), "--device", args.device]
            running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                              env=child_env(args.threads)), log, time.perf_counter())
        time.sleep(1)
        for name, (process, log, t0) in list(running.items()):
            if process.poll() is not None:
                log.close()
                codes[name] = process.returncode
                say(f"{name}: evaluation ended (exit {process.returncode}) in {time.perf_counter() - t0:.0f} s")
                del running[name]
    return codes


def last_log(run: Path) -> dict[str, Any]:
    """The run's last logged interval, or {} when it logged none."""
    records = read_metrics(run) if (run / "metrics.jsonl").exists() else []
    return records[-1] if records else {}


def summarise(args: argparse.Namespace, out: Path, trained: dict[str, dict[str, Any]],
              evaluated: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for name in args.models:
        run = out / name
        last = last_log(run)
        row: dict[str, Any] = {
            "model": name, "recipe": MODELS[name][0], "flags": " ".join(MODELS[name][1]),
            "compile": trained[name]["compile"], "train_exit": trained[name].get("rc"),
            "steps": last.get("step"), "of_steps": args.steps,
            "train_minutes": None if "elapsed_seconds" not in last else last["elapsed_seconds"] / 60,
            "images_per_second": last.get("images_per_second"),
            "reconstruction": last.get("reconstruction"), "kl": last.get("kl"), "elbo": last.get("elbo"),
            "active_dims": last.get("active_dims"), "evaluate_exit": evaluated.get(name),
        }
        record_path = run / "evaluation.json"
        if record_path.exists():
            values = summary_values(json.loads(record_path.read_text()))
            row.update({column: values.get(label) for column, label in SCORES.items()})
        row["published"] = {k: {"value": v, "source": s} for k, (v, s) in PUBLISHED.get(name, {}).items()}
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], device: str) -> None:
    def num(value: Any, digits: int = 3) -> str:
        return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    print(f"\nThe standard budget's models on {device} (last logged interval; evaluation: full protocol, mean codes)")
    print(f"{'model':8s} {'steps':>8s} {'min':>6s} {'img/s':>7s} {'recon':>7s} {'KL':>6s} "
          + " ".join(f"{c:>10s}" for c in SCORES) + "  compile")
    for row in rows:
        steps = "–" if row["steps"] is None else f"{row['steps']:,}"
        print(f"{row['model']:8s} {steps:>8s} {num(row['train_minutes'], 1):>6s} "
              f"{num(row['images_per_second'], 0):>7s} {num(row['reconstruction'], 1):>7s} {num(row['kl'], 1):>6s} "
              + " ".join(f"{num(row.get(c)):>10s}" for c in SCORES) + f"  {row['compile']}")
    print("\npublished beside them:")
    for row in rows:
        for metric, entry in row["published"].items():
            print(f"  {row['model']:8s} {metric:10s} ours {num(row.get(metric)):>8s}   published {entry['value']:>9s}  "
                  f"({entry['source']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="new folder for the runs, logs and summary")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=300_000, help="steps per model (the standard budget: 300,000)")
    parser.add_argument("--minutes", type=float, default=None, help="stop each model after this many minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", help="fp32 (as published), tf32 (CUDA), bf16 or auto")
    parser.add_argument("--compile", default="off", help="off, on or cudagraphs (CUDA)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each training or evaluation process")
    parser.add_argument("--eval-workers", type=int, default=5, help="evaluations run at once")
    parser.add_argument("--log-every", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=20_000)
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"unknown model(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODELS)}")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} exists and is not empty; give a new --out (nothing is overwritten)")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)

    say("rendering or loading dSprites once, before the runs start")
    subprocess.run([sys.executable, "-c", "from betavae.data.dsprites import DSprites; DSprites().packed_grid()"],
                   check=True)
    trained = train_all(args, args.out)
    done = [name for name in args.models if trained[name].get("rc") == 0]
    evaluated = evaluate_all(args, args.out, done)
    rows = summarise(args, args.out, trained, evaluated)
    (args.out / "summary.json").write_text(json.dumps({"device": args.device, "seed": args.seed, "rows": rows},
                                                      indent=2) + "\n")
    print_table(rows, args.device)
    failed = [name for name in args.models if trained[name].get("rc") != 0 or evaluated.get(name) != 0]
    if failed:
        print(f"\nfailed: {', '.join(failed)}; their logs are in {args.out / 'logs'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
