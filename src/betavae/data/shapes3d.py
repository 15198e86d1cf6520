"""3D Shapes (Burgess & Kim 2018, deepmind/3d-shapes) read from the published ``3dshapes.h5``.

Layout relied on (the dataset's README and its TFDS builder):

* HDF5 dataset ``images``: ``(480000, 64, 64, 3)`` uint8, RGB, channels last.
* HDF5 dataset ``labels``: ``(480000, 6)`` float, the factor *values* (not class indices), columns
  floor hue, wall hue, object hue, scale, shape, orientation with 10, 10, 10, 8, 4 and 15 values.
* Images and labels in grid order, orientation fastest:
  ``index = 48000*floor + 4800*wall + 480*object + 60*scale + 15*shape + orientation``.

Class indices are the rank of a label among the distinct values of its column (as TFDS does); the
values themselves are kept as the factors' values, not assumed. A full file must have exactly those
counts of distinct values, in grid order, or it is refused. The file is gzip-chunked (about 270 MB
on disk, 5.9 GB as uint8): single images are read by index; training reads it whole, in chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from betavae.data.arrays import channels_last_store
from betavae.data.base import GridDataset, ImageDataset, ImageStore, grid_strides
from betavae.data.labelled import LabelledDataset
from betavae.errors import DataError

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
IMAGE_SHAPE_HWC = (64, 64, 3)


def _h5py():
    try:
        import h5py
    except ImportError as exc:  # a dependency; only a broken install lacks it
        raise DataError("reading 3dshapes.h5 needs the h5py package; install it with 'pip install h5py'.") from exc
    return h5py


class HDF5Images(ImageDataset):
    """uint8 images ``(N, H, W, C)`` in an HDF5 dataset, read by index (the file stays open)."""

    def __init__(self, path: Path, key: str, name: str):
        self.path, self.key, self.name = Path(path), key, name
        self._file = _h5py().File(self.path, "r")
        self._images = self._file[key]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, h, w, c = self._images.shape
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def images(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        unique, inverse = np.unique(indices, return_inverse=True)  # HDF5 reads need increasing indices
        rows = self._images[unique] if len(unique) else np.zeros((0,) + self._images.shape[1:], np.uint8)
        return rows[inverse.reshape(-1)].transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    def training_store(self, device: torch.device | str = "cpu") -> ImageStore:
        n, h, w, c = self._images.shape
        return channels_last_store(n, (h, w, c), lambda start, stop: self._images[start:stop], device)


def load_shapes3d(path: Path, allow_subset: bool = False) -> GridDataset | LabelledDataset:
    """The 3D Shapes file at ``path``, validated: a full grid, or with ``allow_subset`` fewer images."""
    h5py = _h5py()
    path = Path(path)
    expected = int(np.prod(FACTOR_SIZES))
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("images", "labels") if k not in f]
            if missing:
                raise DataError(f"{path} is not the 3D Shapes file: datasets {missing} are missing (found "
                                f"{sorted(f.keys())}); pass the original 3dshapes.h5.")
            images, labels = f["images"], f["labels"]
            if not isinstance(images, h5py.Dataset) or not isinstance(labels, h5py.Dataset):
                raise DataError(f"{path}: 'images' and 'labels' must be HDF5 datasets, not groups.")
            n = images.shape[0] if images.ndim else 0
            if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE_HWC:
                raise DataError(f"{path}: 'images' has shape {images.shape}, expected ({expected}, 64, 64, 3) for 3D Shapes.")
            if images.dtype != np.uint8:
                raise DataError(f"{path}: 'images' has dtype {images.dtype}, expected uint8 for 3D Shapes.")
            if labels.shape != (n, len(FACTOR_NAMES)):
                raise DataError(f"{path}: 'labels' has shape {labels.shape}, expected ({n}, 6): one row of "
                                f"{', '.join(FACTOR_NAMES)} per image.")
            if not np.issubdtype(labels.dtype, np.number):
                raise DataError(f"{path}: 'labels' has dtype {labels.dtype}, expected float factor values.")
            values = np.asarray(labels[:], dtype=np.float64)
    except OSError as exc:
        raise DataError(f"{path} could not be read as an HDF5 file ({exc}); the file may be truncated or corrupt.") from exc
    if n == 0:
        raise DataError(f"{path} holds no images.")
    if n > expected or (n < expected and not allow_subset):
        raise DataError(f"{path} holds {n:,} images; 3D Shapes has {expected:,}. "
                        + ("Pass --allow-subset to use a file with fewer." if n < expected else "This is not the published file."))
    if not np.all(np.isfinite(values)):
        raise DataError(f"{path}: 'labels' has NaN or infinite values.")
    columns = [np.unique(values[:, k], return_inverse=True) for k in range(len(FACTOR_NAMES))]
    factor_values = tuple(v for v, _ in columns)
    classes = np.stack([c.reshape(-1) for _, c in columns], axis=1).astype(np.int64)
    source = HDF5Images(path, "images", "3dshapes")
    if n < expected:
        return LabelledDataset(source, classes, FACTOR_NAMES, factor_values, name="3dshapes")
    counts = tuple(len(v) for v in factor_values)
    if counts != FACTOR_SIZES:
        raise DataError(f"{path}: 'labels' has {counts} distinct values per factor, expected {FACTOR_SIZES}.")
    if not np.array_equal(classes @ grid_strides(FACTOR_SIZES), np.arange(n)):
        raise DataError(f"{path}: images are not in the published grid order (orientation fastest); "
                        "the file is not the original 3dshapes.h5.")
    return GridDataset(source, "3dshapes", FACTOR_NAMES, FACTOR_SIZES, factor_values)
