"""``run_sweep``: start the local workers, wait for the grid, write the summary, plot and recommendation."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from betavae.checks import one_line
from betavae.data import dataset_from_config
from betavae.errors import BetaVAEError, ConfigError
from betavae.files import write_json_atomic
from betavae.sweep import study as sweep_study
from betavae.sweep.outputs import TRADEOFF_FIGURE, add_udr, plot_tradeoff, write_summary
from betavae.sweep.recommend import recommend
from betavae.sweep.spec import SweepSpec, default_workers_threads, metric_key
from betavae.sweep.storage import redact_url
from betavae.training.config import CONFIG_FILE


def resolve_metric(spec: SweepSpec) -> str:
    """The metric the recommendation ranks by: the given one, else MIG with factors, UDR without."""
    if spec.metric is not None:
        return spec.metric
    dataset = dataset_from_config(spec.trial_config(*spec.grid()[0]))
    evaluated = spec.metrics == "all" or "mig" in [m.strip() for m in spec.metrics.split(",")]
    return "mig" if getattr(dataset, "has_factors", False) and evaluated else "udr"


def _follow_parent(parent: int, every: float = 1.0) -> None:
    """Stop this worker, as Ctrl-C would (its trial is re-enqueued), once ``parent``, the sweep process
    that started it, is gone: a sweep stopped with ``kill`` or by a closed terminal leaves no worker
    training on behind the user's back."""
    while os.getppid() == parent:
        time.sleep(every)
    print("betavae sweep: the sweep process that started this worker is gone; stopping this worker (its trial "
          "goes back to the queue: run the same command again to finish the sweep)", file=sys.stderr, flush=True)
    signal.raise_signal(signal.SIGINT)


def _worker_main(spec: SweepSpec, threads: int, parent: int) -> None:
    import torch

    threading.Thread(target=_follow_parent, args=(parent,), name="follow-sweep", daemon=True).start()
    torch.set_num_threads(threads)
    try:
        sweep_study.work(spec)
    except BetaVAEError as exc:
        print(f"betavae: error: {one_line(str(exc))}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def run_sweep(spec: SweepSpec, stream: TextIO | None = None) -> dict[str, Any]:
    """Run (or resume, or join) the sweep and write its outputs; returns the recommendation."""
    stream = stream or sys.stderr
    spec.validate()
    out = Path(spec.out)
    check_out(out)
    spec.metric = resolve_metric(spec)
    if spec.storage_url.startswith("sqlite"):
        out.mkdir(parents=True, exist_ok=True)  # the study file may live in OUT
    study = sweep_study.open_study(spec)  # storage problems and mismatched settings fail here, before any work
    out.mkdir(parents=True, exist_ok=True)
    print(f"betavae sweep: {len(spec.grid())} trials ({spec.objective}, {spec.weight_symbol} in "
          f"{', '.join(f'{w:g}' for w in spec.weights)}; seeds {', '.join(map(str, spec.seeds))}) in study "
          f"'{spec.name}' at {redact_url(spec.storage_url)}; ranking by {metric_key(spec.metric)}",
          file=stream, flush=True)
    started = time.monotonic()
    if spec.workers == 1:
        done = threading.Event()
        watcher = threading.Thread(target=sweep_study.watch, args=(study, spec, stream, started, done.is_set),
                                   name="sweep-progress", daemon=True)
        watcher.start()
        try:
            sweep_study.work(spec, stream)
        finally:
            done.set()
            watcher.join()
    else:
        _run_local_workers(spec, study, stream, started)
    return summarize(spec, study, stream)


#: What a sweep makes in its --out before anything else: a folder holding one of them is a sweep's own.
SWEEP_MARKS = ("study.db", "trials", "logs")


def check_out(out: Path) -> None:
    """Refuse an ``out`` that is not new, empty or an earlier sweep's own folder: the sweep writes
    summary.csv, report.html and more there, and must not replace what a user or a training run put there."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; give the sweep a new folder.")
    entries = sorted(p.name for p in out.iterdir())
    if not entries or any((out / mark).exists() for mark in SWEEP_MARKS):
        return
    kind = "a training run directory" if (out / CONFIG_FILE).exists() else "a folder that is not a sweep's"
    listed = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise ConfigError(f"--out {out} is {kind} (it holds {listed}); the sweep would write its summary, figures and "
                      "report over what is there. Give a new or empty folder, or the --out of an earlier sweep to "
                      "finish it.")


def _run_local_workers(spec: SweepSpec, study: Any, stream: TextIO, started: float) -> None:
    context = multiprocessing.get_context("spawn")
    threads = default_workers_threads(spec.workers)
    processes = [context.Process(target=_worker_main, args=(spec, threads, os.getpid()), name=f"sweep-worker-{i}")
                 for i in range(spec.workers)]
    for p in processes:
        p.start()
    try:
        sweep_study.watch(study, spec, stream, started, lambda: not any(p.is_alive() for p in processes))
    except KeyboardInterrupt:
        for p in processes:
            p.join(timeout=30)  # each worker re-enqueues its trial on the same Ctrl-C
        raise
    for p in processes:
        p.join()
    codes = [p.exitcode for p in processes]
    if any(code not in (0, None) for code in codes):
        print(f"betavae sweep: worker exit codes {codes}; run the same command again to finish the sweep.",
              file=stream, flush=True)


def summarize(spec: SweepSpec, study: Any, stream: TextIO | None = None) -> dict[str, Any]:
    """Write summary.csv/json, tradeoff.png and recommendation.json from the study; print the result."""
    stream = stream or sys.stderr
    out = Path(spec.out)
    trials = sweep_study.collect(study, spec)
    add_udr(trials, spec)
    metric = metric_key(spec.metric or "udr")
    write_summary(out, trials, metric)
    result = recommend(trials, metric, spec.tolerance, spec.weight_symbol)
    plot_tradeoff(out / TRADEOFF_FIGURE, trials, metric, spec.weight_symbol, result["weight"])
    missing = [t["name"] for t in trials if t["state"] == "MISSING"]
    if missing:
        result["reason"] += f" Not finished yet: {', '.join(missing)} (run the same command to finish them)."
    result["objective"] = spec.objective
    result["weight_field"] = spec.weight_field
    write_json_atomic(out / "recommendation.json", _clean(result))
    print(f"betavae sweep: summary in {out / 'summary.csv'}, trade-off plot in {out / TRADEOFF_FIGURE}", file=stream)
    weight = result["weight"]
    head = "no recommendation" if weight is None else f"recommended {spec.weight_symbol} = {weight:g}"
    print(f"betavae sweep: {head}: {result['reason']}", file=stream, flush=True)
    _report(out, trials, result, stream)
    return result


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _report(out: Path, trials: list[dict[str, Any]], recommendation: dict[str, Any], stream: TextIO) -> None:
    """SWEEP/report.html through ``betavae.report.sweep_report`` when the report package has it."""
    try:
        from betavae.report import sweep_report  # type: ignore[attr-defined]
    except ImportError:
        print("betavae sweep: note: this betavae has no betavae.report.sweep_report, so no report.html was written.",
              file=stream)
        return
    sweep_report(out, [{k: v for k, v in t.items() if k != "udr_codes"} for t in trials], recommendation)
