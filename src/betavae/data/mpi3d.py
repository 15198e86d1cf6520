"""MPI3D (Gondal et al. 2019, rr-learning/disentanglement_dataset): ``mpi3d_toy``, ``mpi3d_realistic``
and ``mpi3d_real`` ``.npz`` files, memory-mapped.

Layout relied on (the dataset's README and ``read_data.py``, which saves with ``np.savez``):

* one array ``images``: ``(1036800, 64, 64, 3)`` uint8, RGB, channels last (12.7 GB);
* no labels: the images are in grid order, ``array.reshape([6, 6, 2, 3, 3, 40, 40, 64, 64, 3])``
  indexes them by factor, i.e. row-major with ``vertical_axis`` fastest::

    object_color      6  white, green, red, blue, brown, olive
    object_shape      6  cone, cube, cylinder, hexagonal, pyramid, sphere
    object_size       2  small, large
    camera_height     3  top, center, bottom
    background_color  3  purple, sea green, salmon
    horizontal_axis  40  0..39
    vertical_axis    40  0..39

The first public release (and disentanglement_lib's loader) had 460,800 images: 4 colours (green,
red, blue, brown) and 4 shapes (cone, cube, hexagonal prism, sphere), other factors as above; a file
of that size is read with those sizes. The array is never loaded whole: it is memory-mapped inside the
``.npz`` (see :mod:`betavae.data.arrays`), so memory stays bounded whatever the file's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from betavae.data.arrays import MappedImages, npz_member_array
from betavae.data.base import GridDataset, grid_strides
from betavae.data.labelled import LabelledDataset
from betavae.errors import DataError

FACTOR_NAMES = ("object_color", "object_shape", "object_size", "camera_height", "background_color",
                "horizontal_axis", "vertical_axis")
FACTOR_SIZES = (6, 6, 2, 3, 3, 40, 40)
#: The 2019 first release: 4 object colours and 4 shapes.
FIRST_RELEASE_FACTOR_SIZES = (4, 4, 2, 3, 3, 40, 40)
VARIANTS = ("mpi3d_toy", "mpi3d_realistic", "mpi3d_real")
IMAGE_SHAPE_HWC = (64, 64, 3)


def is_mpi3d_file(path: Path) -> bool:
    """Whether ``path`` is named like an MPI3D file (``mpi3d_toy.npz``, ``mpi3d_real_subset.npz``, ...)."""
    stem = Path(path).stem.lower()
    return any(stem == v or stem.startswith(v + "_") or stem.startswith(v + "-") for v in VARIANTS)


def load_mpi3d(path: Path, allow_subset: bool = False) -> GridDataset | LabelledDataset:
    """The MPI3D ``.npz`` at ``path``, validated and memory-mapped.

    With ``allow_subset``, a file with fewer images is read as the first images of the grid order.
    """
    path = Path(path)
    name = next(v for v in sorted(VARIANTS, key=len, reverse=True) if path.stem.lower().startswith(v))
    images = npz_member_array(path, "images")
    expected = int(np.prod(FACTOR_SIZES))
    if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE_HWC:
        raise DataError(f"{path}: 'images' has shape {images.shape}, expected ({expected}, 64, 64, 3) for MPI3D.")
    if images.dtype != np.uint8:
        raise DataError(f"{path}: 'images' has dtype {images.dtype}, expected uint8 for MPI3D.")
    n = len(images)
    source = MappedImages(images, name)
    values = lambda sizes: tuple(np.arange(s) for s in sizes)  # noqa: E731 - class indices are the values
    for sizes in (FACTOR_SIZES, FIRST_RELEASE_FACTOR_SIZES):
        if n == int(np.prod(sizes)):
            return GridDataset(source, name, FACTOR_NAMES, sizes, values(sizes))
    if n == 0 or n > expected or not allow_subset:
        raise DataError(f"{path} holds {n:,} images; MPI3D has {expected:,} (or {int(np.prod(FIRST_RELEASE_FACTOR_SIZES)):,} "
                        "in its first release). " + ("Pass --allow-subset to use the first images of the grid order."
                                                     if 0 < n < expected else "This is not an MPI3D file."))
    factors = (np.arange(n)[:, None] // grid_strides(FACTOR_SIZES)) % np.asarray(FACTOR_SIZES)
    return LabelledDataset(source, factors, FACTOR_NAMES, values(FACTOR_SIZES), name=name, factor_sizes=FACTOR_SIZES)
