"""Images the user already has as a NumPy array file (``.npy`` or ``.npz``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from betavae.data.base import ImageDataset, ImageStore
from betavae.errors import DataError


class ArrayDataset(ImageDataset):
    """Images from an array ``(N, H, W)`` or ``(N, H, W, C)`` / ``(N, C, H, W)`` with C in {1, 3}.

    uint8 arrays are read as 0..255; float arrays must lie in [0, 1]. Images whose pixels are all 0
    or 1 are treated as binary (bit-packed in memory, Bernoulli likelihood exact).
    """

    def __init__(self, images: np.ndarray, name: str = "array"):
        self.name = name
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[:, None]
        elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.transpose(0, 3, 1, 2)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(
                f"{name}: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W) with 1 or 3 "
                f"channels, got {images.shape}."
            )
        if len(images) == 0:
            raise DataError(f"{name}: the array holds no images.")
        if images.dtype == np.uint8:
            self.binary = bool(images.max() <= 1)
            self._uint8 = images
        elif np.issubdtype(images.dtype, np.floating):
            if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
                raise DataError(f"{name}: float images must be finite and lie in [0, 1].")
            self.binary = bool(np.all((images == 0) | (images == 1)))
            self._uint8 = images.astype(np.uint8) if self.binary else np.rint(images * 255).astype(np.uint8)
        else:
            raise DataError(f"{name}: images must be uint8 or float in [0, 1], got dtype {images.dtype}.")
        self._scale = 1.0 if self.binary else 1.0 / 255.0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self._uint8.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._uint8)

    def images(self, indices: np.ndarray) -> np.ndarray:
        return self._uint8[np.asarray(indices, dtype=np.int64)].astype(np.float32) * self._scale

    def training_store(self, device: torch.device | str = "cpu") -> ImageStore:
        return ImageStore.from_array(self._uint8, binary=self.binary, device=device)


def open_npz(path: Path) -> "np.lib.npyio.NpzFile":
    """Open a ``.npz`` archive without ever unpickling; a clear error for anything else."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a .npz archive (a zip of arrays); the file may be truncated or of another format.")
    return np.load(path, allow_pickle=False, encoding="latin1")


def pickle_error(path: Path, exc: Exception) -> DataError:
    """The error for an array file that cannot be read safely."""
    if "allow_pickle" in str(exc):
        return DataError(f"{path} holds pickled Python objects, which betavae never loads (they can run code); save plain numeric arrays.")
    return DataError(f"{path} could not be read as a NumPy array file ({exc}); the file may be truncated or corrupt.")


def load_array_file(path: Path) -> np.ndarray:
    """The image array stored in a ``.npy`` file or under ``images``/``imgs`` in a ``.npz``."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with open_npz(path) as npz:
            for key in ("images", "imgs", "x"):
                if key in npz.files:
                    return npz[key]
            raise DataError(
                f"{path}: no image array found; store it under the key 'images' (found {sorted(npz.files)})."
            )
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise pickle_error(path, exc) from exc
