"""The dSprites variants of Locatello et al. 2019 ("Challenging Common Assumptions in the Unsupervised
Learning of Disentangled Representations", ICML, section 5.1): colour, noise and Scream backgrounds.

Each variant has exactly the dSprites factors and grid (the same index gives the same shape, scale,
orientation and position) and 64x64 RGB images. What disentanglement_lib draws from a random state
when an image is sampled (``data/ground_truth/dsprites.py``) is here a fixed function of the image
index (:func:`index_uniform`), so the same index always gives the same image, on any device, and the
"nuisance" randomness is still independent of the factors:

* **color-dsprites**: the shape is drawn in a colour whose R, G, B are each uniform in [0.5, 1];
  the background stays black.
* **noisy-dsprites**: the shape stays white; every background pixel and channel is uniform in
  [0, 1] (``min(shape + noise, 1)``), over its 256 levels k/255 as in any uint8 image.
* **scream-dsprites**: the background is a 64x64 patch of a 274x350 texture at a uniform random
  offset, averaged with a uniform random colour (``(patch + colour) / 2``); the shape inverts the
  background (``1 - background``). disentanglement_lib uses a photograph of Munch's *The Scream*,
  which cannot be downloaded here, so the texture is **procedurally generated** instead
  (:func:`scream_texture`: swirling bands of warm and cool colour from domain-warped value noise).
  Results on this variant are therefore not comparable number-for-number with published ones.

Training draws the shape masks from the bit-packed dSprites grid (shared with ``dsprites`` and cached
once) and paints them on the device per batch (:class:`~betavae.data.base.ProceduralStore`), so a
variant costs no more memory than dSprites itself.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch

from betavae.data.base import GroundTruthDataset, ImageStore, ProceduralStore
from betavae.data.dsprites import FACTOR_NAMES, IMAGE_SIZE, DSprites

_MASK32 = 0xFFFFFFFF
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def hash32(x: ArrayOrTensor) -> ArrayOrTensor:
    """A 32-bit integer mixer ("lowbias32", C. Wellons 2018, "Prospecting for Hash Functions").

    ``x``: int64 tensor or array with values in [0, 2^32); returns the same. Products may pass 2^63
    and wrap, which leaves their low 32 bits (all that is kept) exact.
    """
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def index_uniform(indices: torch.Tensor, count: int, stream: int) -> torch.Tensor:
    """``count`` numbers uniform in [0, 1) per image, ``(n, count)`` float32, on ``indices``' device.

    A fixed function of ``(index, stream, position)``: the same image index always gets the same
    numbers; different streams (colour, noise, offsets) are independent of each other.
    """
    key = hash32((indices.to(torch.int64) * 0x9E3779B1 + stream * 0x85EBCA77) & _MASK32)  # (n,)
    positions = hash32(torch.arange(1, count + 1, device=indices.device, dtype=torch.int64) * 0xC2B2AE35)
    bits = hash32(key.view(-1, 1) ^ positions.view(1, -1))  # (n, count)
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))  # 24 bits: exact in float32, never 1.0


def index_bytes(indices: torch.Tensor, count: int, stream: int) -> torch.Tensor:
    """``count`` bytes uniform over 0..255 per image, ``(n, count)`` uint8, a fixed function of the index.

    Four bytes per 32-bit word, each word one multiply-xorshift round (T. Mueller's 32-bit hash
    constants) of the image's key plus a Weyl step: about 7x cheaper than :func:`index_uniform` per
    value, which matters for per-pixel noise drawn every batch. Bytes are taken little-endian, as
    every device torch runs on stores them.
    """
    key = hash32((indices.to(torch.int64) * 0x9E3779B1 + stream * 0x85EBCA77) & _MASK32)  # (n,)
    words = (count + 3) // 4
    x = (key.view(-1, 1) + torch.arange(words, device=indices.device, dtype=torch.int64) * 0x9E3779B1) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32  # < 2^59: no wrap
    x = x ^ (x >> 16)
    n = x.shape[0]
    return x.view(torch.uint8).view(n, words, 8)[:, :, :4].reshape(n, 4 * words)[:, :count]


# Streams of index_uniform and index_bytes, one per kind of randomness.
_COLOUR, _NOISE, _OFFSET, _TINT = 1, 2, 3, 4

#: The texture size disentanglement_lib gives The Scream (``thumbnail((350, 274))``): height, width.
SCREAM_TEXTURE_SHAPE = (274, 350)


def _value_noise(x: np.ndarray, y: np.ndarray, stream: int) -> np.ndarray:
    """Smooth noise in [0, 1): hashed values on the integer lattice, smoothstep-interpolated."""
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    xi, yi = x0.astype(np.int64) & 0xFFFF, y0.astype(np.int64) & 0xFFFF
    salt = hash32(np.full(1, stream, dtype=np.int64))  # an array: numpy scalars warn when products wrap

    def corner(dx: int, dy: int) -> np.ndarray:
        return (hash32(((xi + dx) << 16 | (yi + dy)) ^ salt) >> 8) / float(1 << 24)

    top = corner(0, 0) * (1 - fx) + corner(1, 0) * fx
    bottom = corner(0, 1) * (1 - fx) + corner(1, 1) * fx
    return top * (1 - fy) + bottom * fy


def _fbm(x: np.ndarray, y: np.ndarray, stream: int, octaves: int = 4) -> np.ndarray:
    """Fractal sum of value noise (octaves at doubling frequency, halving weight), in [0, 1)."""
    total, weight, norm = np.zeros_like(x), 1.0, 0.0
    for octave in range(octaves):
        scale = 2.0**octave
        total += weight * _value_noise(x * scale, y * scale, stream * 16 + octave)
        norm += weight
        weight *= 0.5
    return total / norm


@lru_cache(maxsize=1)
def scream_texture() -> torch.Tensor:
    """The procedurally generated stand-in for The Scream, ``(274, 350, 3)`` float32 in [0, 1].

    Deterministic (no random state): domain-warped fractal noise sets a phase that runs through a
    warm-to-cool cosine palette, giving swirling colour bands in the spirit of the painting's sky.
    """
    h, w = SCREAM_TEXTURE_SHAPE
    y, x = np.meshgrid(np.arange(h) / 40.0, np.arange(w) / 40.0, indexing="ij")
    warp_x, warp_y = _fbm(x, y, 1), _fbm(x + 5.2, y + 1.3, 2)
    phase = _fbm(x + 3.0 * warp_x, y + 3.0 * warp_y, 3) * 2.5 + 0.35 * y
    offsets = np.array([0.0, 0.18, 0.42])  # red, green, blue phase: oranges against blues
    colour = 0.5 + 0.45 * np.cos(2 * math.pi * (phase[..., None] + offsets))
    return torch.from_numpy(np.clip(colour, 0.0, 1.0).astype(np.float32))


class DSpritesVariant(GroundTruthDataset):
    """dSprites' factors and shapes, painted in RGB by :meth:`paint` (see the module docstring)."""

    binary = False
    factor_names = FACTOR_NAMES

    def __init__(self, shapes: DSprites | None = None):
        self.shapes = shapes if shapes is not None else DSprites()

    @property
    def factor_sizes(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.shapes.factor_sizes

    @property
    def factor_values(self) -> tuple[np.ndarray, ...]:
        return self.shapes.factor_values

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, IMAGE_SIZE, IMAGE_SIZE)

    @abstractmethod
    def paint(self, masks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """RGB images ``(B, 3, H, W)`` from shape masks ``(B, 1, H, W)`` float and their indices ``(B,)``."""

    def prepare_reads(self, num_images: int) -> None:
        self.shapes.prepare_reads(num_images)

    def images(self, indices: np.ndarray, chunk: int = 1024) -> np.ndarray:
        indices = self._check_indices(indices)
        out = np.empty((len(indices), *self.image_shape), dtype=np.float32)
        for start in range(0, len(indices), chunk):  # chunks bound the per-pixel noise temporaries
            part = indices[start : start + chunk]
            masks = torch.from_numpy(self.shapes.images(part))
            out[start : start + len(part)] = self.paint(masks, torch.from_numpy(part)).numpy()
        return out

    def training_store(self, device: torch.device | str = "cpu") -> ImageStore:
        shapes = self.shapes.training_store(device)
        return ProceduralStore(shapes.data, self.image_shape, shapes.image_shape, len(self),
                               mask_rows=lambda indices: indices, paint=self.paint)


class ColorDSprites(DSpritesVariant):
    """color-dSprites: the shape in a colour with R, G, B each uniform in [0.5, 1], on black."""

    name = "color-dsprites"

    def paint(self, masks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        colour = 0.5 + 0.5 * index_uniform(indices, 3, _COLOUR)  # (B, 3)
        return masks * colour.view(-1, 3, 1, 1)


class NoisyDSprites(DSpritesVariant):
    """noisy-dSprites: a white shape on uniform [0, 1] noise (every pixel and channel)."""

    name = "noisy-dsprites"

    def paint(self, masks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        _, _, h, w = masks.shape
        noise = index_bytes(indices, 3 * h * w, _NOISE).view(-1, 3, h, w).to(torch.float32) * (1.0 / 255.0)
        return torch.clamp_max(masks + noise, 1.0)


class ScreamDSprites(DSpritesVariant):
    """scream-dSprites: a tinted patch of a procedural texture, inverted inside the shape."""

    name = "scream-dsprites"

    def __init__(self, shapes: DSprites | None = None):
        super().__init__(shapes)
        self._textures: dict[torch.device, torch.Tensor] = {}

    def _texture(self, device: torch.device) -> torch.Tensor:
        """The texture channels-first and flattened, ``(3, Ht * Wt)``, on ``device``."""
        if device not in self._textures:
            self._textures[device] = scream_texture().permute(2, 0, 1).reshape(3, -1).contiguous().to(device)
        return self._textures[device]

    def paint(self, masks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        texture = self._texture(masks.device)  # (3, Ht * Wt)
        height, width = SCREAM_TEXTURE_SHAPE
        b, _, h, w = masks.shape
        offsets = index_uniform(indices, 2, _OFFSET)  # (B, 2): top-left corner, uniform over the texture
        top = (offsets[:, 0] * (height - h + 1)).to(torch.int64).view(-1, 1, 1)
        left = (offsets[:, 1] * (width - w + 1)).to(torch.int64).view(-1, 1, 1)
        pixels = (top + torch.arange(h, device=masks.device).view(1, h, 1)) * width + (
            left + torch.arange(w, device=masks.device).view(1, 1, w))  # (B, h, w) flat texture positions
        patch = texture.index_select(1, pixels.view(-1)).view(3, b, h, w).transpose(0, 1)  # (B, 3, h, w)
        tint = index_uniform(indices, 3, _TINT).view(-1, 3, 1, 1)
        background = (patch + tint) * 0.5
        return background + masks * (1.0 - 2.0 * background)  # inside the shape: 1 - background
