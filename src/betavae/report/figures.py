"""Figures of a run: reconstructions, prior samples, latent traversals (PNG and GIF), training curves."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from betavae.checks import check_seed  # noqa: E402
from betavae.data.base import ImageDataset  # noqa: E402
from betavae.files import atomic_output  # noqa: E402
from betavae.models.vae import VAE  # noqa: E402
from betavae.objectives import OBJECTIVES  # noqa: E402
from betavae.objectives.likelihoods import decoded_mean  # noqa: E402
from betavae.training import rundir  # noqa: E402
from betavae.training.rundir import (CONFIG_FILE, FIGURES_DIR, RECONSTRUCTIONS_FIGURE, SAMPLES_FIGURE,  # noqa: E402
                                     TRAINING_CURVES_FIGURE, TRAVERSALS_ANIMATION, TRAVERSALS_FIGURE)

TRAVERSAL_RANGE = 3.0
TRAVERSAL_STEPS = 11


def image_grid(images: np.ndarray, ncols: int, pad: int = 2, pad_value: float = 0.5) -> np.ndarray:
    """Tile images ``(n, C, H, W)`` in [0, 1] into one ``(rows*(H+pad)+pad, ..., C)`` array."""
    n, c, h, w = images.shape
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, dtype=np.float32)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img.transpose(1, 2, 0)
    return grid


def _to_uint8(grid: np.ndarray) -> np.ndarray:
    grid = np.clip(grid * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return grid[..., 0] if grid.shape[-1] == 1 else grid


def _save_png(grid: np.ndarray, path: Path, scale: int = 2) -> None:
    img = Image.fromarray(_to_uint8(grid))
    with atomic_output(path) as tmp:
        img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(tmp)


@torch.no_grad()
def _decode(model: VAE, z: torch.Tensor) -> np.ndarray:
    return decoded_mean(model.decode(z)).float().cpu().numpy()


def _device(model: VAE) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def traversal_images(model: VAE, image: np.ndarray, dims: list[int], values: np.ndarray) -> np.ndarray:
    """Decoded images ``(len(dims), len(values), C, H, W)``: each dim swept over ``values``, the
    others held at the posterior mean of ``image`` ``(C, H, W)``."""
    device = _device(model)
    mu, _ = model.encode(torch.from_numpy(image[None]).to(device))
    z = mu.repeat(len(dims) * len(values), 1)  # (dims * values, z)
    for row, d in enumerate(dims):
        z[row * len(values): (row + 1) * len(values), d] = torch.as_tensor(values, dtype=z.dtype, device=device)
    out = _decode(model, z)
    return out.reshape(len(dims), len(values), *out.shape[1:])


def plot_reconstructions(model: VAE, images: np.ndarray, path: Path) -> None:
    """Inputs (top row) over their reconstructions from the posterior mean (bottom row)."""
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(images).to(_device(model)))
    recon = _decode(model, mu)
    _save_png(image_grid(np.concatenate([images, recon]), ncols=len(images)), path)


def plot_samples(model: VAE, path: Path, generator: torch.Generator, n: int = 64) -> None:
    """Images decoded from ``n`` draws of the prior N(0, I)."""
    z = torch.randn(n, model.latents, generator=generator).to(_device(model))
    _save_png(image_grid(_decode(model, z), ncols=8), path)


def plot_traversals(model: VAE, image: np.ndarray, kl_per_dim: list[float], collapse_threshold: float,
                    png_path: Path, gif_path: Path) -> None:
    """One row per latent dim, sorted by KL (largest first), swept from -3 to 3 around ``image``'s
    code, with each row's KL written beside it; and an animated GIF of all dims swept together."""
    order = list(np.argsort(kl_per_dim)[::-1])
    values = np.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, TRAVERSAL_STEPS)
    rows = traversal_images(model, image, order, values)  # (D, V, C, H, W)
    d, v = rows.shape[:2]
    fig, axes = plt.subplots(d, 1, figsize=(0.75 * v + 1.6, 0.78 * d + 0.6), squeeze=False)
    for ax, dim, row in zip(axes[:, 0], order, rows):
        grid = image_grid(row, ncols=v, pad=2)
        ax.imshow(_to_uint8(grid), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        collapsed = kl_per_dim[dim] < collapse_threshold
        ax.set_ylabel(f"z{dim}\nKL {kl_per_dim[dim]:.2f}" + ("\n(collapsed)" if collapsed else ""),
                      rotation=0, ha="right", va="center", fontsize=8, color="0.55" if collapsed else "black")
    axes[0, 0].set_title(f"latent traversals, z from {-TRAVERSAL_RANGE:g} to {TRAVERSAL_RANGE:g} (rows sorted by KL, nats)",
                         fontsize=9)
    fig.tight_layout()
    with atomic_output(png_path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

    # GIF: frame t shows every dim (one tile each, KL order) at value t, sweeping forth and back.
    h, w = rows.shape[-2:]
    scale = max(1, 96 // w)
    frames = []
    for t in list(range(v)) + list(range(v - 2, 0, -1)):
        grid = _to_uint8(image_grid(rows[:, t], ncols=d if d <= 8 else -(-d // 2), pad=2))  # one row, or two full ones
        img = Image.fromarray(grid).convert("RGB")
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        canvas = Image.new("RGB", (img.width, img.height + 16), "white")
        canvas.paste(img, (0, 16))
        ImageDraw.Draw(canvas).text((4, 2), f"z = {values[t]:+.1f}  (dims in KL order)", fill="black")
        frames.append(canvas)
    with atomic_output(gif_path) as tmp:
        frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=120, loop=0)


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def drawable_episodes(episodes: Any) -> bool:
    """Whether ``episodes`` (``diagnosis.json``'s list) can be drawn: objects with numeric start and end."""
    return isinstance(episodes, list) and all(
        isinstance(e, dict) and _is_number(e.get("start")) and _is_number(e.get("end")) for e in episodes)


def diagnosis_problem(diagnosis: Any, latents: int) -> str | None:
    """Why ``diagnosis`` (a parsed ``diagnosis.json``) cannot be drawn from for a model of ``latents`` dims;
    None if it can (``kl_per_dim``, ``collapse_threshold`` and ``episodes`` as the training loop writes them)."""
    if isinstance(diagnosis, dict) and isinstance(diagnosis.get("kl_per_dim"), list) \
            and len(diagnosis["kl_per_dim"]) == latents and all(map(_is_number, diagnosis["kl_per_dim"])) \
            and _is_number(diagnosis.get("collapse_threshold")) and drawable_episodes(diagnosis.get("episodes", [])):
        return None
    return "it does not hold the diagnosis of this run (kl_per_dim, collapse_threshold, episodes)"


#: How the curves mark the run's episodes (``diagnosis.json``'s ``episodes``): a shaded span each.
EPISODE_SHADES = {"kl_collapse": ("tab:red", "KL collapsed"), "kl_high": ("tab:purple", "KL above log N")}


def plot_training_curves(history: list[dict[str, Any]], path: Path, collapse_threshold: float,
                         regulariser_label: str = "β·KL", episodes: list[dict[str, Any]] | None = None) -> None:
    """Reconstruction, KL and the weighted regulariser (β·KL for the β-VAE) against step, and the KL
    of each latent dim against step; ``episodes`` of KL collapse or high KL are shaded."""
    steps = [r["step"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for episode in episodes or []:
        if episode.get("kind") in EPISODE_SHADES:
            colour, label = EPISODE_SHADES[episode["kind"]]
            for ax in axes[:2]:
                ax.axvspan(episode["start"], episode["end"], color=colour, alpha=0.12, lw=0,
                           label=label if ax is axes[1] else None)
    axes[0].plot(steps, [r["reconstruction"] for r in history], color="tab:blue")
    axes[0].set_title("reconstruction NLL (nats / image)")
    axes[1].plot(steps, [r["kl"] for r in history], label="KL (unweighted)", color="tab:orange")
    if "weighted_regulariser" in history[0]:
        axes[1].plot(steps, [r["weighted_regulariser"] for r in history], label=f"{regulariser_label} (weighted)",
                     color="tab:red", ls="--")
    axes[1].set_title("KL(q(z|x) || p(z)) (nats)")
    axes[1].legend(fontsize=8)
    per_dim = np.array([r["kl_per_dim"] for r in history])  # (T, D)
    order = np.argsort(per_dim[-1])[::-1]
    for dim in order:
        collapsed = per_dim[-1, dim] < collapse_threshold
        axes[2].plot(steps, per_dim[:, dim], lw=1.0, ls=":" if collapsed else "-", label=f"z{dim}")
    axes[2].axhline(collapse_threshold, color="0.6", lw=0.8, ls="--")
    axes[2].set_title(f"KL per dimension (dotted: collapsed, < {collapse_threshold:g})")
    axes[2].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _regulariser_label(run_dir: Path) -> str:
    """How the run's objective names its weighted regulariser (β·KL for the β-VAE)."""
    import json

    try:
        objective = json.loads((Path(run_dir) / CONFIG_FILE).read_text())["objective"]
        return OBJECTIVES[objective].regulariser_label
    except (OSError, ValueError, KeyError):
        return "weighted regulariser"


def make_figures(run_dir: Path, model: VAE, dataset: ImageDataset, history: list[dict[str, Any]],
                 diagnosis: dict[str, Any], seed: int = 0) -> Path:
    """Write every figure of a run into ``RUN/figures/``; returns that directory."""
    check_seed(seed)
    out = Path(run_dir) / FIGURES_DIR
    rng = np.random.default_rng(seed)
    images = dataset.images(np.sort(rng.choice(len(dataset), size=min(8, len(dataset)), replace=False)))
    model.eval()
    with rundir.lock(run_dir):  # refused while the run trains elsewhere; shared with this thread's training
        out.mkdir(exist_ok=True)
        plot_reconstructions(model, images, out / RECONSTRUCTIONS_FIGURE)
        plot_samples(model, out / SAMPLES_FIGURE, torch.Generator().manual_seed(seed))
        plot_traversals(model, images[0], diagnosis["kl_per_dim"], diagnosis["collapse_threshold"],
                        out / TRAVERSALS_FIGURE, out / TRAVERSALS_ANIMATION)
        plot_training_curves(history, out / TRAINING_CURVES_FIGURE, diagnosis["collapse_threshold"],
                             _regulariser_label(run_dir), diagnosis.get("episodes"))
    return out
