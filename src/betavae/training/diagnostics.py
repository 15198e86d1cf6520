"""Plain-words diagnosis of a run from its logged terms, following the β-VAE practice:

- a latent dimension whose KL stays near 0 carries no information about x (collapsed);
- "if the KL divergence quickly drops to a very low value while reconstruction remains poor, β might
  be too high, or the model might lack capacity";
- "if the KL divergence remains high, β might be too low".

"Poor" reconstruction is measured against the best decoder that ignores z (it predicts each pixel's
mean): its NLL is the data's reconstruction baseline. "High" KL is measured against log N for a
dataset of N distinct images: the information z can carry about x is at most H(x) <= log N nats, so
an average KL above it is spent on posteriors narrower than the data needs, not on information.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from betavae.data.base import ImageDataset
from betavae.objectives.likelihoods import reconstruction_nll

#: A run whose reconstruction improves on the z-free baseline by less than this is "poor".
POOR_RECONSTRUCTION_GAIN = 0.1
#: A β-TCVAE total-correlation estimate below this (nats) is bias, not noise: the true value is >= 0.
IMPOSSIBLE_TC = -0.5


def _against_baseline(gain: float) -> str:
    """The reconstruction's gain over ignoring the latents, in words (early in training it can be worse)."""
    if not math.isfinite(gain):
        return "not comparable with ignoring the latents"
    if gain < 0:
        return f"{-100 * gain:.0f}% worse than ignoring the latents"
    return f"{100 * gain:.0f}% better than ignoring the latents"


def _sample_images(dataset: ImageDataset, rng: np.random.Generator, n: int) -> torch.Tensor:
    idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    return torch.from_numpy(dataset.images(np.sort(idx)))


def _constant(x: torch.Tensor, likelihood: str) -> torch.Tensor:
    return x.median(0).values if likelihood == "laplace" else x.mean(0)  # the NLL-optimal constant


def constant_image(dataset: ImageDataset, likelihood: str, rng: np.random.Generator, n: int = 2048) -> torch.Tensor:
    """The image ``(C, H, W)`` of the best decoder that ignores z (each pixel's mean; its median for the
    Laplace likelihood), estimated on ``n`` images."""
    return _constant(_sample_images(dataset, rng, n), likelihood)


def reconstruction_baseline(
    dataset: ImageDataset, likelihood: str, scale: float, rng: np.random.Generator, n: int = 2048
) -> float:
    """NLL per image of the best decoder that ignores z (a constant image), estimated on ``n`` images."""
    x = _sample_images(dataset, rng, n)
    return float(reconstruction_nll(torch.logit(_constant(x, likelihood), eps=1e-6).expand_as(x), x, likelihood, scale).mean())


def diagnose(
    record: dict[str, Any],
    weight: str,
    collapse_threshold: float,
    baseline_reconstruction: float,
    dataset_size: int,
    kl_high_advice: str | None = None,
) -> dict[str, Any]:
    """A diagnosis of the run from its last logged ``record``: findings in words, and their numbers.

    ``weight`` names the objective's regularisation weight (e.g. "β = 4") for the messages;
    ``kl_high_advice`` (the objective's :meth:`~betavae.objectives.base.Objective.kl_high_advice`) says what
    a KL above log N means of its settings (default: that ``weight`` may be too low).
    """
    advice = kl_high_advice or _default_kl_high_advice(weight)
    kl_per_dim = [float(v) for v in record["kl_per_dim"]]
    kl = float(record["kl"])
    reconstruction = float(record["reconstruction"])
    collapsed = [i for i, v in enumerate(kl_per_dim) if v < collapse_threshold]
    active = [i for i, v in enumerate(kl_per_dim) if v >= collapse_threshold]
    gain = 1.0 - reconstruction / baseline_reconstruction if baseline_reconstruction > 0 else float("nan")
    kl_ceiling = math.log(dataset_size)
    findings: list[dict[str, str]] = []

    if collapsed:
        findings.append({
            "level": "info" if active else "warning",
            "code": "collapsed_dims",
            "text": (
                f"{len(collapsed)} of {len(kl_per_dim)} latent dimensions collapsed (KL < {collapse_threshold:g} "
                f"nats): {collapsed}. They carry no information about the input; {len(active)} are active."
            ),
        })
    if kl < max(collapse_threshold, 0.5) and gain < POOR_RECONSTRUCTION_GAIN:
        findings.append({
            "level": "warning",
            "code": "beta_too_high",
            "text": (
                f"KL near zero ({kl:.3g} nats) while reconstruction stays poor ({reconstruction:.4g} nats per "
                f"image, {_against_baseline(gain)}): {weight} may be too high, or "
                "the model too small. Try a lower β, a capacity schedule, or a longer run."
            ),
        })
    if kl > kl_ceiling:
        findings.append({
            "level": "warning",
            "code": "beta_too_low",
            "text": (
                f"KL stays high ({kl:.3g} nats, above log N = {kl_ceiling:.3g} nats for {dataset_size} distinct "
                f"images): {advice}."
            ),
        })
    tc = record.get("total_correlation")
    if isinstance(tc, (int, float)) and tc < IMPOSSIBLE_TC:
        mi, dwkl = record.get("mutual_information", float("nan")), record.get("dimension_wise_kl", float("nan"))
        findings.append({
            "level": "warning",
            "code": "tc_estimate_biased",
            "text": (
                f"The β-TCVAE estimates are biased: total correlation {tc:.3g} nats (≥ 0 in truth), mutual "
                f"information {mi:.3g} against a KL of {kl:.3g} and a ceiling of log N = {kl_ceiling:.3g}, "
                f"dimension-wise KL {dwkl:.3g}. The batch holds too few images near each code to estimate q(z), "
                "so the total-correlation term also penalises the KL itself (docs/objectives.md, β-TCVAE). "
                "A larger --batch-size or --tc-memory reduces the bias."
            ),
        })
    if not collapsed and len(kl_per_dim) > 1 and weight in ("β = 0", "β = 1"):
        findings.append({
            "level": "info",
            "code": "all_dims_active",
            "text": (
                f"Every latent dimension is in use at {weight}: nothing presses the code toward few "
                "independent factors. Raise β if you want a disentangled code."
            ),
        })
    if not findings:
        findings.append({
            "level": "info",
            "code": "ok",
            "text": (
                f"{len(active)} active dimensions, KL {kl:.3g} nats, reconstruction {reconstruction:.4g} nats per "
                f"image ({_against_baseline(gain)}): no sign of β being too high or too low."
            ),
        })
    return {
        "step": int(record["step"]),
        "weight": weight,
        "kl_high_advice": advice,
        "reconstruction": reconstruction,
        "baseline_reconstruction": baseline_reconstruction,
        "reconstruction_gain": gain,
        "kl": kl,
        "kl_ceiling_log_n": kl_ceiling,
        "dataset_size": dataset_size,
        "kl_per_dim": kl_per_dim,
        "collapse_threshold": collapse_threshold,
        "collapsed_dims": collapsed,
        "active_dims": active,
        "findings": findings,
    }


def _default_kl_high_advice(weight: str) -> str:
    return f"{weight} may be too low to press the latents toward independent factors"


def format_diagnosis(diagnosis: dict[str, Any]) -> str:
    """The findings as printable lines: those of the last step, then the run's episodes (if known)."""
    lines = [f"  [{f['level']}] {f['text']}" for f in diagnosis["findings"]]
    if "episodes" in diagnosis:
        lines.append("  over the whole run:")
        lines += [f"  [{e['level']}] {e['text']}" for e in diagnosis["episodes"]] or [
            "  [info] no KL collapse, no KL above log N, and no latent dim collapsed after being active."]
    return "\n".join(lines)


# --- Diagnosis over the run: episodes of collapse and of high KL, found record by record ---------------

#: KL (nats, summed over dims) below which the posterior counts as collapsed, if the collapse threshold
#: of one dim is smaller: a fraction of a nat is no code at all, however many dims share it.
COLLAPSED_KL = 0.5
#: Consecutive logged records that must agree before a state changes: one noisy record neither starts
#: nor ends an episode.
PERSISTENCE = 2
#: A dim counts as active (for the first time, or again after a collapse) only once its KL reaches this many
#: times the collapse threshold; it counts as collapsed once it falls below the threshold itself. The gap
#: between the two keeps a dim whose minibatch KL hovers at the threshold (a dim in disuse, whose estimate
#: from 64 images now and then crosses 0.1 nats) from opening and closing an episode at every crossing.
ACTIVE_MARGIN = 2.0


class _Latch:
    """A yes/no state that flips only when ``persistence`` consecutive records disagree with it.

    It remembers the step of the first disagreeing record (where the change began) and of the last
    record that agreed with the old state (where the old state ended).
    """

    def __init__(self, persistence: int, state: bool = False):
        self.persistence = persistence
        self.state = state
        self._count = 0
        self._since: int | None = None  # first record of the current disagreement
        self.last_agreeing: int | None = None  # last record that agreed with the state

    def update(self, value: bool, step: int) -> tuple[int, int | None] | None:
        """Feed one record; on a flip, (step the new state began, last step of the old state)."""
        if value == self.state:
            self._count, self._since, self.last_agreeing = 0, None, step
            return None
        if self._count == 0:
            self._since = step
        self._count += 1
        if self._count < self.persistence:
            return None
        began, ended = self._since, self.last_agreeing
        self.state, self._count, self._since, self.last_agreeing = value, 0, None, step
        return began, ended


def _dims(dims: list[int]) -> str:
    return ", ".join(f"z{d}" for d in dims)


def _span(start: int, end: int) -> str:
    return f"at step {start}" if start == end else f"from step {start} to step {end}"


class LiveDiagnosis:
    """Watches the logged records of a run in order and says when something goes wrong, when it does.

    Three kinds of episode, each starting or ending only after :data:`PERSISTENCE` consecutive records
    agree (so a noisy record does not flap):

    - ``kl_collapse``: the total KL below ``max(collapse_threshold, 0.5)`` nats while the reconstruction
      is less than 10% better than the decoder that ignores z (β too high, or the model too small);
    - ``kl_high``: the KL above log N nats for N distinct images (β too low);
    - ``dim_collapse``: a latent dim that had been active (KL >= :data:`ACTIVE_MARGIN` times
      ``collapse_threshold``) falls below the threshold; it ends if the dim becomes active again (by the
      same margin). Dims never active are not episodes.

    :meth:`observe` returns the events (starts and ends) a record brings, each once, at the record
    where it is detected; the event's ``step`` is where the change began. :meth:`episodes` describes
    the whole run so far. The same inputs as :func:`diagnose`.
    """

    def __init__(self, weight: str, collapse_threshold: float, baseline_reconstruction: float, dataset_size: int,
                 persistence: int = PERSISTENCE, kl_high_advice: str | None = None):
        if persistence < 1:
            raise ValueError(f"persistence must be at least 1 record, got {persistence}")
        self.weight = weight
        self.kl_high_advice = kl_high_advice or _default_kl_high_advice(weight)
        self.collapse_threshold = collapse_threshold
        self.active_threshold = ACTIVE_MARGIN * collapse_threshold
        self.baseline_reconstruction = baseline_reconstruction
        self.dataset_size = dataset_size
        self.persistence = persistence
        self.collapsed_kl = max(collapse_threshold, COLLAPSED_KL)
        self.kl_ceiling = math.log(dataset_size)
        self._latches = {"kl_collapse": _Latch(persistence), "kl_high": _Latch(persistence)}
        self._dims: list[_Latch] = []  # per dim: active or not
        self._ever_active: list[bool] = []
        self._open: dict[str, int] = {}  # episode kind (or "dim_collapse:i") -> its start step
        self._closed: list[dict[str, Any]] = []  # finished episodes, in the order they ended
        self._kl: list[tuple[int, float]] = []  # (step, KL) of every record, for the episodes' extremes
        self.last_step: int | None = None

    def _gain(self, reconstruction: float) -> float:
        if self.baseline_reconstruction <= 0:
            return float("nan")
        return 1.0 - reconstruction / self.baseline_reconstruction

    def observe(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Feed the next logged record; the events it brings (usually none)."""
        step = int(record["step"])
        kl, reconstruction = float(record["kl"]), float(record["reconstruction"])
        kl_per_dim = [float(v) for v in record["kl_per_dim"]]
        gain = self._gain(reconstruction)
        self._kl.append((step, kl))
        self.last_step = step
        events: list[dict[str, Any]] = []

        collapsed = kl < self.collapsed_kl and not gain >= POOR_RECONSTRUCTION_GAIN  # a NaN gain counts as poor
        flip = self._latches["kl_collapse"].update(collapsed, step)
        if flip is not None:
            events.append(self._kl_collapse_event(flip, kl, reconstruction, gain))
        flip = self._latches["kl_high"].update(kl > self.kl_ceiling, step)
        if flip is not None:
            events.append(self._kl_high_event(flip, kl))

        if not self._dims:
            self._dims = [_Latch(self.persistence) for _ in kl_per_dim]
            self._ever_active = [False] * len(kl_per_dim)
        fell, revived = [], []
        for d, (latch, value) in enumerate(zip(self._dims, kl_per_dim)):
            # hysteresis: an active dim stays so down to the threshold; an inactive one needs the margin
            flip = latch.update(value >= (self.collapse_threshold if latch.state else self.active_threshold), step)
            if flip is None:
                continue
            if latch.state:
                if self._ever_active[d]:
                    revived.append((d, flip))
                self._ever_active[d] = True
            else:
                fell.append((d, flip))
        active = sum(v >= self.collapse_threshold for v in kl_per_dim)
        if fell:
            events.append(self._dims_event("started", fell, kl_per_dim, active))
        if revived:
            events.append(self._dims_event("ended", revived, kl_per_dim, active))
        return events

    def _end(self, key: str, kind: str, last: int | None, **extra: Any) -> int:
        """Close the open episode ``key``; its start step."""
        start = self._open.pop(key)
        self._closed.append({"kind": kind, "start": start, "end": last if last is not None else start,
                             "ongoing": False, **extra})
        return start

    def _kl_collapse_event(self, flip: tuple[int, int | None], kl: float, reconstruction: float,
                           gain: float) -> dict[str, Any]:
        began, last = flip
        if self._latches["kl_collapse"].state:
            self._open["kl_collapse"] = began
            return {"kind": "kl_collapse", "state": "started", "step": began, "message": (
                f"KL collapsed since step {began}: {kl:.3g} nats (below {self.collapsed_kl:g}) while the "
                f"reconstruction, {reconstruction:.4g} nats per image, is {_against_baseline(gain)}: {self.weight} "
                "may be too high, or the model too small.")}
        start = self._end("kl_collapse", "kl_collapse", last)
        return {"kind": "kl_collapse", "state": "ended", "step": began, "episode_start": start, "message": (
            f"KL recovered since step {began} (now {kl:.3g} nats, reconstruction {_against_baseline(gain)}); it "
            f"had collapsed {_span(start, last if last is not None else start)}.")}

    def _kl_high_event(self, flip: tuple[int, int | None], kl: float) -> dict[str, Any]:
        began, last = flip
        ceiling = f"log N = {self.kl_ceiling:.3g} nats for {self.dataset_size} distinct images"
        if self._latches["kl_high"].state:
            self._open["kl_high"] = began
            return {"kind": "kl_high", "state": "started", "step": began, "message": (
                f"KL high since step {began}: {kl:.3g} nats, above {ceiling}: {self.kl_high_advice}.")}
        start = self._end("kl_high", "kl_high", last)
        return {"kind": "kl_high", "state": "ended", "step": began, "episode_start": start, "message": (
            f"KL back below log N since step {began} (now {kl:.3g} nats); it was above {ceiling} "
            f"{_span(start, last if last is not None else start)}.")}

    def _dims_event(self, state: str, flips: list[tuple[int, tuple[int, int | None]]], kl_per_dim: list[float],
                    active: int) -> dict[str, Any]:
        dims = [d for d, _ in flips]
        began = min(b for _, (b, _) in flips)
        of = f"{active} of {len(kl_per_dim)} dims active"
        if state == "started":
            for d, (b, _) in flips:
                self._open[f"dim_collapse:{d}"] = b
            what = "dim" if len(dims) == 1 else "dims"
            return {"kind": "dim_collapse", "state": "started", "step": began, "dims": dims, "message": (
                f"latent {what} {_dims(dims)} collapsed since step {began} (KL below {self.collapse_threshold:g} "
                f"nats: {', '.join(f'{kl_per_dim[d]:.2g}' for d in dims)}) after being active; {of}.")}
        for d, (b, last) in flips:
            self._end(f"dim_collapse:{d}", "dim_collapse", last, dims=[d], active_again=b)
        return {"kind": "dim_collapse", "state": "ended", "step": began, "dims": dims, "message": (
            f"latent {'dim' if len(dims) == 1 else 'dims'} {_dims(dims)} active again since step {began}; {of}.")}

    def flags(self) -> dict[str, int]:
        """The current (confirmed) state, for a chart: 1 inside an episode, and the dims collapsed after being active."""
        return {
            "kl_collapsed": int(self._latches["kl_collapse"].state),
            "kl_high": int(self._latches["kl_high"].state),
            "dims_collapsed": sum(1 for k in self._open if k.startswith("dim_collapse:")),
        }

    def episodes(self) -> list[dict[str, Any]]:
        """Every episode of the records seen so far, in order of start, each with its sentence.

        An episode still open at the last record is ``ongoing`` and ends there.
        """
        found = [dict(e) for e in self._closed]
        for key, start in self._open.items():
            kind, _, dim = key.partition(":")
            found.append({"kind": kind, "start": start, "end": self.last_step, "ongoing": True,
                          **({"dims": [int(dim)]} if dim else {})})
        found = _group_dims(found)
        for e in found:
            e["level"] = "info" if e["kind"] == "dim_collapse" else "warning"
            e["text"] = self._sentence(e)
        order = {"kl_collapse": 0, "kl_high": 1, "dim_collapse": 2}
        return sorted(found, key=lambda e: (e["start"], order[e["kind"]], e.get("dims", [])))

    def _sentence(self, e: dict[str, Any]) -> str:
        kls = [kl for s, kl in self._kl if e["start"] <= s <= e["end"]] or [float("nan")]
        if e["kind"] == "kl_collapse":
            head = (f"KL collapsed (below {self.collapsed_kl:g} nats, reconstruction at the level of ignoring the "
                    f"latents; lowest {min(kls):.3g} nats)")
            tail = (f"from step {e['start']} until the end (step {e['end']}): {self.weight} may be too high, or the "
                    "model too small" if e["ongoing"] else f"{_span(e['start'], e['end'])}, then recovered")
            return f"{head} {tail}."
        if e["kind"] == "kl_high":
            head = f"KL high (above log N = {self.kl_ceiling:.3g} nats; highest {max(kls):.3g} nats)"
            tail = (f"from step {e['start']} until the end (step {e['end']}): {self.kl_high_advice}"
                    if e["ongoing"] else f"{_span(e['start'], e['end'])}, then fell below log N")
            return f"{head} {tail}."
        dims = f"Latent {'dim' if len(e['dims']) == 1 else 'dims'} {_dims(e['dims'])}"
        if e["ongoing"]:
            return (f"{dims} collapsed at step {e['start']} (KL below {self.collapse_threshold:g} nats) after being "
                    "active, and stayed collapsed to the end.")
        return (f"{dims} collapsed {_span(e['start'], e['end'])} after being active, then active again from step "
                f"{e['active_again']}.")


def _group_dims(episodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dim episodes with the same steps made one (with every dim), so a collapse of all dims reads as one line."""
    grouped: dict[tuple, dict[str, Any]] = {}
    others = []
    for e in episodes:
        if e["kind"] != "dim_collapse":
            others.append(e)
            continue
        key = (e["start"], e["end"], e["ongoing"], e.get("active_again"))
        if key in grouped:
            grouped[key]["dims"] = sorted(grouped[key]["dims"] + e["dims"])
        else:
            grouped[key] = {**e, "dims": list(e["dims"])}
    return others + list(grouped.values())


def run_episodes(history: list[dict[str, Any]], weight: str, collapse_threshold: float,
                 baseline_reconstruction: float, dataset_size: int, persistence: int = PERSISTENCE,
                 kl_high_advice: str | None = None) -> list[dict[str, Any]]:
    """The episodes of a whole run, found by replaying :class:`LiveDiagnosis` over its logged records.

    The records themselves are the source (not the events logged with them), so runs logged before
    events existed, and resumed runs (whose ``metrics.jsonl`` holds every step), are described alike.
    """
    monitor = LiveDiagnosis(weight, collapse_threshold, baseline_reconstruction, dataset_size, persistence,
                            kl_high_advice)
    for record in history:
        monitor.observe(record)
    return monitor.episodes()


def diagnose_run(history: list[dict[str, Any]], weight: str, collapse_threshold: float,
                 baseline_reconstruction: float, dataset_size: int,
                 kl_high_advice: str | None = None) -> dict[str, Any]:
    """:func:`diagnose` of the last record, with ``episodes``: what happened over the whole run."""
    diagnosis = diagnose(history[-1], weight, collapse_threshold, baseline_reconstruction, dataset_size,
                         kl_high_advice)
    diagnosis["episodes"] = run_episodes(history, weight, collapse_threshold, baseline_reconstruction, dataset_size,
                                         kl_high_advice=kl_high_advice)
    return diagnosis
