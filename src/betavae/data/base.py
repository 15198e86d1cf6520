"""Datasets: the factor interface metrics rely on, and compact in-memory image storage.

Two kinds of dataset know the generative factors of their images (:class:`FactorDataset`):

* :class:`GroundTruthDataset`: a full factorial grid (dSprites and its kin, 3D Shapes, MPI3D,
  SmallNORB, Cars3D). Flat indices are row-major over the factors, every combination exists exactly
  once, and ``factors_to_index`` is exact.
* :class:`~betavae.data.labelled.LabelledDataset`: images with one factor vector each (the user's
  labels, or a subset of a grid). Some combinations may be missing and others repeated.

Metrics use only the :class:`FactorDataset` methods: ``sample_factors`` (draws factor vectors of
existing images), ``factors_to_index`` (an image for each vector), ``sample_factors_fixing`` (factor
vectors that share one factor with given values, as the BetaVAE and FactorVAE scores need) and
``index_to_factors``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from betavae.errors import DataError

#: Square image sizes the architectures accept (see ``betavae.models.architectures``).
IMAGE_SIZES = (32, 64, 128)


class ImageDataset(ABC):
    """A finite set of images of one shape, values in [0, 1].

    ``images(indices)`` returns float32 images ``(n, C, H, W)``; ``training_store(device)`` returns
    a :class:`ImageStore` holding every image compactly on ``device`` for fast batch draws.
    """

    name: str = "images"
    #: True when every pixel is 0 or 1 (Bernoulli likelihood is exact, bit-packing is lossless).
    binary: bool = False

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)``."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def images(self, indices: np.ndarray) -> np.ndarray:
        """Float32 images ``(n, C, H, W)`` in [0, 1] for flat ``indices``."""

    def prepare_reads(self, num_images: int) -> None:
        """Told that about ``num_images`` images are about to be read: a dataset that renders images
        on demand may build and cache all of them at once when that is cheaper."""

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        return self.images(np.array([index % len(self)]))[0]

    @abstractmethod
    def training_store(self, device: torch.device | str = "cpu") -> "ImageStore":
        """All images, compact, on ``device``."""

    @property
    def has_factors(self) -> bool:
        return False


class FactorDataset(ImageDataset):
    """Images whose discrete generative factors are known (as class indices ``0..size-1``)."""

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    @property
    @abstractmethod
    def factor_values(self) -> tuple[np.ndarray, ...]:
        """The value of each class index, one array per factor."""

    @property
    def has_factors(self) -> bool:
        return True

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    @abstractmethod
    def is_full_grid(self) -> bool:
        """Whether every factor combination has exactly one image (``factors_to_index`` is a bijection)."""

    @abstractmethod
    def index_to_factors(self, indices: np.ndarray) -> np.ndarray:
        """Factor class indices ``(n, K)`` int64 for flat ``indices`` ``(n,)``."""

    @abstractmethod
    def factors_to_index(self, factors: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A flat index ``(n,)`` of an image with each factor vector ``(n, K)``.

        Where several images share a vector, ``rng`` picks one uniformly (without it: the first).
        """

    @abstractmethod
    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` factor vectors ``(n, K)`` int64, each the factors of an existing image."""

    @abstractmethod
    def sample_factors_fixing(self, factor: int, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Factor vectors ``(n, K)`` of existing images whose factor ``factor`` equals ``values`` ``(n,)``.

        The other factors are drawn as :meth:`sample_factors` draws them, given the fixed one.
        """

    def images_from_factors(self, factors: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Float32 images ``(n, C, H, W)`` for factor class indices ``(n, K)``."""
        return self.images(self.factors_to_index(factors, rng))

    def _check_factors(self, factors: np.ndarray) -> np.ndarray:
        factors = np.asarray(factors)
        if factors.ndim != 2 or factors.shape[1] != self.num_factors:
            raise DataError(
                f"factors must have shape (n, {self.num_factors}) for {self.name}, got {factors.shape}"
            )
        if not np.issubdtype(factors.dtype, np.integer):
            raise DataError(f"factors must be integer class indices for {self.name}, got dtype {factors.dtype}")
        if np.any(factors < 0) or np.any(factors >= np.asarray(self.factor_sizes)):
            raise DataError(
                f"factor class indices out of range for {self.name}: sizes are {self.factor_sizes}"
            )
        return factors.astype(np.int64)

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if np.any(indices < 0) or np.any(indices >= len(self)):
            raise DataError(f"indices out of range for {self.name} ({len(self)} images)")
        return indices


def grid_strides(sizes: tuple[int, ...]) -> np.ndarray:
    """Row-major strides of a factor grid (the last factor varies fastest)."""
    sizes_array = np.asarray(sizes, dtype=np.int64)
    return np.concatenate([np.cumprod(sizes_array[::-1])[::-1][1:], [1]]).astype(np.int64)


class GroundTruthDataset(FactorDataset):
    """A dataset whose images are a full grid over known, discrete generative factors.

    Flat indices are row-major over the factors in ``factor_names`` order (the last factor varies
    fastest), as in dSprites.
    """

    @property
    def is_full_grid(self) -> bool:
        return True

    def __len__(self) -> int:
        return int(np.prod(self.factor_sizes))

    @property
    def _strides(self) -> np.ndarray:
        return grid_strides(self.factor_sizes)

    def factors_to_index(self, factors: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Flat indices ``(n,)`` for factor class indices ``(n, K)`` (``rng`` is unused: one image each)."""
        return self._check_factors(factors) @ self._strides

    def index_to_factors(self, indices: np.ndarray) -> np.ndarray:
        """Factor class indices ``(n, K)`` for flat ``indices`` ``(n,)``."""
        indices = self._check_indices(indices)
        sizes = np.asarray(self.factor_sizes, dtype=np.int64)
        return (indices[:, None] // self._strides) % sizes

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` factor vectors drawn uniformly over the grid, ``(n, K)`` int64."""
        return np.stack([rng.integers(0, s, size=n) for s in self.factor_sizes], axis=1)

    def sample_factors_fixing(self, factor: int, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64).reshape(-1)
        factors = self.sample_factors(len(values), rng)
        factors[:, factor] = values
        return self._check_factors(factors)


class GridDataset(GroundTruthDataset):
    """A full factor grid over the images of ``source``, which must be stored in grid order."""

    def __init__(self, source: ImageDataset, name: str, factor_names: tuple[str, ...],
                 factor_sizes: tuple[int, ...], factor_values: tuple[np.ndarray, ...]):
        if len(source) != int(np.prod(factor_sizes)):
            raise DataError(f"{name}: {len(source)} images do not fill the factor grid {factor_sizes}.")
        self.source = source
        self.name = name
        self.binary = source.binary
        self.factor_names = tuple(factor_names)
        self.factor_sizes = tuple(int(s) for s in factor_sizes)
        self._values = tuple(np.asarray(v) for v in factor_values)

    @property
    def factor_values(self) -> tuple[np.ndarray, ...]:
        return self._values

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.source.image_shape

    def images(self, indices: np.ndarray) -> np.ndarray:
        return self.source.images(indices)

    def training_store(self, device: torch.device | str = "cpu") -> "ImageStore":
        return self.source.training_store(device)


def pack_binary(images: np.ndarray) -> np.ndarray:
    """Bit-pack binary images ``(n, ...)`` into ``(n, ceil(pixels / 8))`` uint8 (8x smaller)."""
    flat = np.asarray(images).reshape(len(images), -1)
    return np.packbits(flat.astype(bool), axis=1)


_BIT_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


def unpack_binary_torch(packed: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """Inverse of :func:`pack_binary` on any device: ``(n, bytes)`` uint8 -> ``(n, pixels)`` float32."""
    shifts = _BIT_SHIFTS.to(packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # (n, bytes, 8), most significant bit first
    return bits.reshape(packed.shape[0], -1)[:, :num_pixels].to(torch.float32)


@dataclass
class ImageStore:
    """Every training image on one device, compact; ``batch(idx)`` unpacks a batch there.

    Binary images are bit-packed (1 bit per pixel); others are uint8 (1 byte per pixel value),
    either ``(N, C, H, W)`` or, with ``channels_last``, ``(N, H, W, C)`` as image files store them
    (batches then come out as channels-last strided ``(B, C, H, W)`` views, which the convolutional
    models prefer anyway). Batches are drawn by index on the device: no worker processes, no copies.
    """

    data: torch.Tensor  # (N, bytes) uint8 packed bits, (N, C, H, W) or (N, H, W, C) uint8
    image_shape: tuple[int, int, int]
    packed: bool
    channels_last: bool = False

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Float32 images ``(B, C, H, W)`` in [0, 1] for ``indices`` (a tensor on the store's device)."""
        rows = self.data.index_select(0, indices)
        if self.packed:
            c, h, w = self.image_shape
            return unpack_binary_torch(rows, c * h * w).view(-1, c, h, w)
        if self.channels_last:
            rows = rows.permute(0, 3, 1, 2)
        return rows.to(torch.float32).div_(255.0)

    @classmethod
    def from_array(cls, images: np.ndarray, binary: bool, device: torch.device | str) -> "ImageStore":
        """Build a store from float images in [0, 1] or uint8 images ``(N, C, H, W)``."""
        shape = tuple(int(s) for s in images.shape[1:])
        if binary:
            return cls(torch.from_numpy(pack_binary(images)).to(device), shape, True)
        if images.dtype != np.uint8:
            images = np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
        return cls(torch.from_numpy(np.ascontiguousarray(images)).to(device), shape, False)


class ProceduralStore(ImageStore):
    """Images computed per batch on the device from compact stored masks.

    ``data`` holds bit-packed masks ``(M, bytes)`` of shape ``mask_shape``; image ``i`` uses mask row
    ``mask_rows(i)`` and ``paint(masks, indices)`` turns masks ``(B, 1, H, W)`` into images
    ``(B, C, H, W)`` (colour, noise, texture), deterministically from the index.
    """

    def __init__(self, data: torch.Tensor, image_shape: tuple[int, int, int], mask_shape: tuple[int, int, int],
                 num_images: int, mask_rows: Callable[[torch.Tensor], torch.Tensor],
                 paint: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__(data, image_shape, packed=True)
        self.mask_shape = mask_shape
        self.num_images = num_images
        self.mask_rows = mask_rows
        self.paint = paint

    def __len__(self) -> int:
        return self.num_images

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        c, h, w = self.mask_shape
        rows = self.data.index_select(0, self.mask_rows(indices))
        return self.paint(unpack_binary_torch(rows, c * h * w).view(-1, c, h, w), indices)
