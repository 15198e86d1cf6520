"""colored-shapes: coloured 2D shapes on coloured backgrounds, a procedural ground-truth grid.

A harder sibling of dSprites in which colour is a factor, not a nuisance, and every factor is known
exactly (nothing is random). 64x64 RGB, the full grid over seven factors (1,048,576 images)::

    object_hue      8   hue k/8 of the shape (saturation 0.9, value 1.0)
    background_hue  4   hue k/4 + 1/8 of the background (saturation 0.55, value 0.45)
    shape           4   square, ellipse, heart, triangle
    scale           4   linspace(0.5, 1, 4)
    orientation     8   linspace(0, pi/2, 8, endpoint=False) radians, counter-clockwise
    posX           16   linspace(0, 1, 16)
    posY           16   linspace(0, 1, 16)

    index = 131072*object_hue + 32768*background_hue + 8192*shape + 2048*scale
            + 256*orientation + 16*posX + posY

Geometry follows our dSprites renderer (:func:`betavae.data.dsprites.rasterise`: centre at
``16 + 32*pos`` pixels, bounding-circle radius ``0.225 * 64 * scale``, no anti-aliasing). The object
is always brighter than the background (value 1.0 against 0.45), so the shape stays visible whatever
the two hues. Orientations stay below a quarter turn, so no two orientations of a shape draw the same
image (the square repeats every quarter turn, the triangle every third, the ellipse every half);
dSprites' full turn has such repeats.

The 32,768 shape masks (shape x scale x orientation x posX x posY) are rendered once and bit-packed
(16 MB, cached on disk); colours are painted per batch on the training device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from betavae.data.base import GroundTruthDataset, ImageStore, ProceduralStore, grid_strides, pack_binary
from betavae.data.cache import load_or_build
from betavae.data.dsprites import IMAGE_SIZE, rasterise

FACTOR_NAMES = ("object_hue", "background_hue", "shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (8, 4, 4, 4, 8, 16, 16)
SHAPE_NAMES = ("square", "ellipse", "heart", "triangle")
OBJECT_SATURATION, OBJECT_VALUE = 0.9, 1.0
BACKGROUND_SATURATION, BACKGROUND_VALUE = 0.55, 0.45
#: Bump when the rendered pixels change, so stale caches are not reused.
RENDERER_VERSION = 1

_COLOUR_FACTORS = 2  # the first two factors are colours; the other five are the shape's geometry
_GEOMETRY_SIZES = FACTOR_SIZES[_COLOUR_FACTORS:]
_NUM_GEOMETRIES = int(np.prod(_GEOMETRY_SIZES))
_RADIUS_PER_SCALE = 0.225 * IMAGE_SIZE
_POS_OFFSET, _POS_SPAN = 16.0, 32.0


def factor_values() -> tuple[np.ndarray, ...]:
    """The value of each class index, one array per factor (hues in turns, angles in radians)."""
    return (
        np.arange(8) / 8.0,
        np.arange(4) / 4.0 + 1.0 / 8.0,
        np.arange(4, dtype=np.float64),
        np.linspace(0.5, 1.0, 4),
        np.linspace(0.0, np.pi / 2, 8, endpoint=False),
        np.linspace(0.0, 1.0, 16),
        np.linspace(0.0, 1.0, 16),
    )


def hsv_to_rgb(hue: torch.Tensor, saturation: float, value: float) -> torch.Tensor:
    """RGB ``(n, 3)`` in [0, 1] for hues ``(n,)`` in turns: the closed form
    ``f(k) = v - v s max(0, min(k, 4 - k, 1))``, ``k = (m + 6 h) mod 6`` for m = 5, 3, 1 (R, G, B)."""
    m = torch.tensor([5.0, 3.0, 1.0], device=hue.device)
    k = torch.remainder(m + 6.0 * hue.view(-1, 1), 6.0)
    ramp = torch.clamp(torch.minimum(torch.minimum(k, 4.0 - k), torch.ones_like(k)), min=0.0)
    return value - value * saturation * ramp


def render_geometry(geometry: np.ndarray) -> np.ndarray:
    """Binary masks ``(n, 64, 64)`` uint8 for geometry class indices ``(n, 5)`` (shape .. posY)."""
    geometry = torch.from_numpy(np.asarray(geometry, dtype=np.int64))
    values = [torch.from_numpy(v).float() for v in factor_values()[_COLOUR_FACTORS:]]
    masks = rasterise(
        geometry[:, 0],
        values[1][geometry[:, 1]] * _RADIUS_PER_SCALE,
        values[2][geometry[:, 2]],
        values[3][geometry[:, 3]] * _POS_SPAN + _POS_OFFSET,
        values[4][geometry[:, 4]] * _POS_SPAN + _POS_OFFSET,
    )
    return masks.to(torch.uint8).numpy()


def _render_geometry_packed() -> np.ndarray:
    """Every shape mask in geometry-grid order, bit-packed ``(32768, 512)`` uint8."""
    rows = np.arange(_NUM_GEOMETRIES)
    geometry = (rows[:, None] // grid_strides(_GEOMETRY_SIZES)) % np.asarray(_GEOMETRY_SIZES)
    return pack_binary(render_geometry(geometry))


class ColoredShapes(GroundTruthDataset):
    """Coloured shapes on coloured backgrounds; every factor known exactly (see the module docstring)."""

    name = "colored-shapes"
    binary = False
    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, cache_directory: Path | None = None):
        self.cache_directory = cache_directory
        self._values = factor_values()
        self._geometry: np.ndarray | None = None

    @property
    def factor_values(self) -> tuple[np.ndarray, ...]:
        return self._values

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, IMAGE_SIZE, IMAGE_SIZE)

    def packed_geometry(self) -> np.ndarray:
        """The 32,768 shape masks, bit-packed (rendered once, cached on disk)."""
        if self._geometry is None:
            self._geometry = load_or_build(f"colored_shapes_v{RENDERER_VERSION}_geometry",
                                           _render_geometry_packed, self.cache_directory)
        return self._geometry

    def paint(self, masks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """RGB images ``(B, 3, H, W)`` from masks ``(B, 1, H, W)``; the hues come from the indices."""
        colour = indices // _NUM_GEOMETRIES  # object_hue * 4 + background_hue
        hues = [torch.as_tensor(v, dtype=torch.float32, device=masks.device) for v in self._values[:2]]
        sizes = FACTOR_SIZES[1]
        obj = hsv_to_rgb(hues[0][colour // sizes], OBJECT_SATURATION, OBJECT_VALUE).view(-1, 3, 1, 1)
        background = hsv_to_rgb(hues[1][colour % sizes], BACKGROUND_SATURATION, BACKGROUND_VALUE).view(-1, 3, 1, 1)
        return background + masks * (obj - background)

    def images(self, indices: np.ndarray) -> np.ndarray:
        indices = self._check_indices(indices)
        factors = self.index_to_factors(indices)
        masks = torch.from_numpy(render_geometry(factors[:, _COLOUR_FACTORS:])).unsqueeze(1).to(torch.float32)
        return self.paint(masks, torch.from_numpy(indices)).numpy()

    def training_store(self, device: torch.device | str = "cpu") -> ImageStore:
        data = torch.from_numpy(self.packed_geometry()).to(device)
        return ProceduralStore(data, self.image_shape, (1, IMAGE_SIZE, IMAGE_SIZE), len(self),
                               mask_rows=lambda indices: indices % _NUM_GEOMETRIES, paint=self.paint)
