"""Cheap ground-truth datasets and encoders for metric tests.

``FactorGrid`` is a full factorial grid whose "image" of a sample is its factor class indices, so
an encoder can read the factors back exactly (the identity representation) at no rendering cost.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from betavae.data.base import GroundTruthDataset, ImageDataset, ImageStore

DSPRITES_SIZES = (3, 6, 40, 32, 32)


class FactorGrid(GroundTruthDataset):
    """A factor grid of any sizes; image ``(1, 1, K)`` = the factor class indices as floats."""

    name = "factor_grid"

    def __init__(self, sizes: tuple[int, ...] = DSPRITES_SIZES):
        self.factor_sizes = tuple(sizes)
        self.factor_names = tuple(f"f{j}" for j in range(len(sizes)))

    @property
    def factor_values(self) -> tuple[np.ndarray, ...]:
        return tuple(np.arange(s, dtype=np.float64) for s in self.factor_sizes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, 1, self.num_factors)

    def images(self, indices: np.ndarray) -> np.ndarray:
        factors = self.index_to_factors(np.asarray(indices))
        return factors.astype(np.float32).reshape(len(factors), 1, 1, self.num_factors)

    def training_store(self, device: torch.device | str = "cpu") -> ImageStore:
        return ImageStore.from_array(self.images(np.arange(len(self))), binary=False, device=device)


class Unlabelled(ImageDataset):
    """Images without factors (as a user's own folder): ``has_factors`` is False."""

    name = "unlabelled"

    def __init__(self, n: int = 500, seed: int = 0, images: np.ndarray | None = None):
        self._images = np.random.default_rng(seed).random((n, 1, 2, 3)).astype(np.float32) if images is None else images

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._images.shape[1:])

    def __len__(self) -> int:
        return len(self._images)

    def images(self, indices: np.ndarray) -> np.ndarray:
        return self._images[np.asarray(indices)]

    def training_store(self, device: torch.device | str = "cpu") -> ImageStore:
        return ImageStore.from_array(self._images, binary=False, device=device)


def labelled_subset(sizes: tuple[int, ...] = (3, 4, 5, 6), n: int = 400, seed: int = 0):
    """A LabelledDataset that is not a grid: random images of a grid, some combinations missing,
    some repeated; each image shows its factors as ``FactorGrid`` does."""
    from betavae.data.labelled import LabelledDataset

    factors = FactorGrid(sizes).sample_factors(n, np.random.default_rng(seed))
    images = factors.astype(np.float32).reshape(n, 1, 1, len(sizes))
    return LabelledDataset(Unlabelled(images=images), factors, [f"f{j}" for j in range(len(sizes))],
                           [np.arange(s) for s in sizes], name="labelled")


def identity(images: np.ndarray) -> np.ndarray:
    """The factors themselves as the code: a perfectly disentangled representation."""
    return images.reshape(len(images), -1).astype(np.float64)


def constant(images: np.ndarray) -> np.ndarray:
    return np.zeros((len(images), 5))


class Counting:
    """Wraps an encoder and records the images (as grid rows) of every call."""

    def __init__(self, encode):
        self.encode = encode
        self.calls: list[np.ndarray] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(images.reshape(len(images), -1).copy())
        return self.encode(images)


class PosteriorEncoder:
    """A Gaussian 'posterior' around the scaled factors plus collapsed dims, as encoder_fn exposes."""

    def __init__(self, sizes: tuple[int, ...], sigma: float = 0.02, extra_dims: int = 2):
        self.scale = 1.0 / (np.asarray(sizes, dtype=np.float64) - 1)
        self.sigma = sigma
        self.extra_dims = extra_dims

    def codes_and_posterior(self, images: np.ndarray):
        factors = images.reshape(len(images), -1) * self.scale
        mu = np.concatenate([factors, np.zeros((len(images), self.extra_dims))], axis=1)
        logvar = np.concatenate([np.full(factors.shape, 2 * np.log(self.sigma)), np.zeros((len(images), self.extra_dims))], axis=1)
        return mu, mu, logvar

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.codes_and_posterior(images)[0]


@pytest.fixture
def grid() -> FactorGrid:
    return FactorGrid()


@pytest.fixture
def small_grid() -> FactorGrid:
    return FactorGrid((3, 4, 5))
