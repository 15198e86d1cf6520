"""Datasets: the ground-truth interface metrics rely on, and compact in-memory image storage.

A :class:`GroundTruthDataset` is a full factorial grid of generative factors (dSprites and its kin):
it knows its factor names, sizes and values, converts flat indices to factor class indices and
back, samples factors and returns the images for given factors. Metrics use nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from betavae.errors import DataError


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


class GroundTruthDataset(ImageDataset):
    """A dataset whose images are a full grid over known, discrete generative factors.

    Flat indices are row-major over the factors in ``factor_names`` order (the last factor varies
    fastest), as in dSprites.
    """

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

    def __len__(self) -> int:
        return int(np.prod(self.factor_sizes))

    @property
    def _strides(self) -> np.ndarray:
        sizes = np.asarray(self.factor_sizes, dtype=np.int64)
        return np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]]).astype(np.int64)

    def factors_to_index(self, factors: np.ndarray) -> np.ndarray:
        """Flat indices ``(n,)`` for factor class indices ``(n, K)``."""
        factors = np.asarray(factors)
        if factors.ndim != 2 or factors.shape[1] != self.num_factors:
            raise DataError(
                f"factors must have shape (n, {self.num_factors}) for {self.name}, got {factors.shape}"
            )
        sizes = np.asarray(self.factor_sizes)
        if np.any(factors < 0) or np.any(factors >= sizes):
            raise DataError(
                f"factor class indices out of range for {self.name}: sizes are {self.factor_sizes}"
            )
        return factors.astype(np.int64) @ self._strides

    def index_to_factors(self, indices: np.ndarray) -> np.ndarray:
        """Factor class indices ``(n, K)`` for flat ``indices`` ``(n,)``."""
        indices = np.asarray(indices, dtype=np.int64)
        if np.any(indices < 0) or np.any(indices >= len(self)):
            raise DataError(f"indices out of range for {self.name} ({len(self)} images)")
        sizes = np.asarray(self.factor_sizes, dtype=np.int64)
        return (indices[:, None] // self._strides) % sizes

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` factor vectors drawn uniformly over the grid, ``(n, K)`` int64."""
        return np.stack([rng.integers(0, s, size=n) for s in self.factor_sizes], axis=1)

    def images_from_factors(self, factors: np.ndarray) -> np.ndarray:
        """Float32 images ``(n, C, H, W)`` for factor class indices ``(n, K)``."""
        return self.images(self.factors_to_index(factors))


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

    Binary images are bit-packed (1 bit per pixel); others are uint8 (1 byte per pixel value).
    Batches are drawn by index on the device, so no worker processes or host copies are needed.
    """

    data: torch.Tensor  # (N, bytes) uint8 packed bits, or (N, C, H, W) uint8
    image_shape: tuple[int, int, int]
    packed: bool

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
