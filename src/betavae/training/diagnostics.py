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


def reconstruction_baseline(
    dataset: ImageDataset, likelihood: str, scale: float, rng: np.random.Generator, n: int = 2048
) -> float:
    """NLL per image of the best decoder that ignores z (a constant image), estimated on ``n`` images."""
    idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    x = torch.from_numpy(dataset.images(np.sort(idx)))
    centre = x.median(0).values if likelihood == "laplace" else x.mean(0)  # the NLL-optimal constant
    p = centre.clamp(1e-6, 1 - 1e-6)
    output = torch.log(p) - torch.log1p(-p)  # decoder output whose sigmoid is the constant image
    return float(reconstruction_nll(output.expand_as(x), x, likelihood, scale).mean())


def diagnose(
    record: dict[str, Any],
    weight: str,
    collapse_threshold: float,
    baseline_reconstruction: float,
    dataset_size: int,
) -> dict[str, Any]:
    """A diagnosis of the run from its last logged ``record``: findings in words, and their numbers.

    ``weight`` names the objective's regularisation weight (e.g. "β = 4") for the messages.
    """
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
                f"image, {100 * gain:.0f}% better than ignoring the latents): {weight} may be too high, or "
                "the model too small. Try a lower β, a capacity schedule, or a longer run."
            ),
        })
    if kl > kl_ceiling:
        findings.append({
            "level": "warning",
            "code": "beta_too_low",
            "text": (
                f"KL stays high ({kl:.3g} nats, above log N = {kl_ceiling:.3g} nats for {dataset_size} distinct "
                f"images): {weight} may be too low to press the latents toward independent factors."
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
                f"image ({100 * gain:.0f}% better than ignoring the latents): no sign of β being too high or too low."
            ),
        })
    return {
        "step": int(record["step"]),
        "weight": weight,
        "reconstruction": reconstruction,
        "baseline_reconstruction": baseline_reconstruction,
        "reconstruction_gain": gain,
        "kl": kl,
        "kl_ceiling_log_n": kl_ceiling,
        "kl_per_dim": kl_per_dim,
        "collapse_threshold": collapse_threshold,
        "collapsed_dims": collapsed,
        "active_dims": active,
        "findings": findings,
    }


def format_diagnosis(diagnosis: dict[str, Any]) -> str:
    """The findings as printable lines."""
    return "\n".join(f"  [{f['level']}] {f['text']}" for f in diagnosis["findings"])
