"""SmallNORB (LeCun et al. 2004, cs.nyu.edu/~ylclab/data/norb-v1.0-small) from its original files.

Files relied on, in one folder (each may also be gzipped, ``.mat.gz``, as distributed)::

    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat

Despite the extension these are not MATLAB files but the NORB "binary matrix" format, little-endian:
``int32 magic``, ``int32 ndim``, ``max(3, ndim)`` ``int32`` dimensions (unused ones are 1), then the
elements. Magic ``0x1E3D4C55`` = uint8, ``0x1E3D4C54`` = int32. Per split:

* ``-dat``: uint8 ``(24300, 2, 96, 96)``, a stereo pair per image; the left image (index 0) is used,
  as in disentanglement_lib;
* ``-cat``: int32 ``(24300,)``, category 0-4 (animal, human, airplane, truck, car);
* ``-info``: int32 ``(24300, 4)``: instance 0-9, elevation 0-8 (30 to 70 degrees), azimuth
  0, 2, ..., 34 (times 10 degrees; halved here to 0-17), lighting 0-5.

The training split holds instances 4, 6, 7, 8, 9 of each category and the testing split 0, 1, 2, 3,
5, so together they are the full grid over category (5), instance (10), elevation (9), azimuth (18)
and lighting (6): 48,600 images, stored here in that row-major order. disentanglement_lib treats the
instance as a nuisance drawn at random; here it is a factor like the others. Images are resized from
96x96 to ``image_size`` (Pillow, Lanczos). One split alone is a subset (``allow_subset``).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np

from betavae.data.arrays import ArrayDataset
from betavae.data.base import GridDataset, grid_strides
from betavae.data.folders import resize_array
from betavae.data.labelled import LabelledDataset
from betavae.errors import DataError

FACTOR_NAMES = ("category", "instance", "elevation", "azimuth", "lighting")
FACTOR_SIZES = (5, 10, 9, 18, 6)
CATEGORY_NAMES = ("animal", "human", "airplane", "truck", "car")
MAGIC_UINT8, MAGIC_INT32 = 0x1E3D4C55, 0x1E3D4C54
NATIVE_SIZE = 96
_FILE = re.compile(r"^smallnorb-(?P<chunk>.+)-(?P<split>training|testing)-(?P<kind>dat|cat|info)\.mat(?P<gz>\.gz)?$")


def find_files(directory: Path) -> dict[str, dict[str, Path]]:
    """``{split: {kind: path}}`` of the SmallNORB files in ``directory``."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(Path(directory).iterdir()):
        match = _FILE.match(path.name)
        if match and path.is_file():
            found.setdefault(match["split"], {})[match["kind"]] = path
    return found


def is_smallnorb(path: Path) -> bool:
    """Whether ``path`` is a SmallNORB file or a folder holding them."""
    path = Path(path)
    return bool(find_files(path)) if path.is_dir() else bool(_FILE.match(path.name))


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[return-value]


def _read_exactly(f: BinaryIO, size: int, path: Path) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise DataError(f"{path} is truncated (ended {size - len(data):,} bytes early); download it again.")
    return data


def _header(f: BinaryIO, path: Path, magic: int) -> tuple[int, ...]:
    """The dimensions from a binary-matrix header, after checking its element type."""
    found, ndim = np.frombuffer(_read_exactly(f, 8, path), "<i4")
    if found != magic:
        kinds = {MAGIC_UINT8: "uint8", MAGIC_INT32: "int32"}
        raise DataError(f"{path}: magic number {int(found):#x} is not the {kinds[magic]} matrix ({magic:#x}) of "
                        "SmallNORB; the file is not a SmallNORB binary matrix, or is corrupt.")
    if not 1 <= ndim <= 8:
        raise DataError(f"{path}: {int(ndim)} dimensions in the header; the file is corrupt.")
    dims = np.frombuffer(_read_exactly(f, 4 * max(3, int(ndim)), path), "<i4")
    return tuple(int(d) for d in dims[: int(ndim)])


def read_labels(path: Path, columns: int) -> np.ndarray:
    """An int32 label matrix (``-cat``: 1 column, ``-info``: 4) as int64 ``(N, columns)``."""
    try:
        with _open(path) as f:
            dims = _header(f, path, MAGIC_INT32)
            if len(dims) != (1 if columns == 1 else 2) or (columns > 1 and dims[1] != columns):
                raise DataError(f"{path}: shape {dims}, expected (N,{' ' + str(columns) if columns > 1 else ''}).")
            data = np.frombuffer(_read_exactly(f, 4 * int(np.prod(dims)), path), "<i4")
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} could not be read ({exc}); the file may be corrupt.") from exc
    return data.reshape(dims[0], columns).astype(np.int64)


def read_left_images(path: Path, image_size: int, chunk: int = 2048) -> np.ndarray:
    """The left image of every stereo pair, resized: uint8 ``(N, 1, image_size, image_size)``.

    Read in chunks of pairs, so memory holds one chunk of full-size images at a time.
    """
    try:
        with _open(path) as f:
            dims = _header(f, path, MAGIC_UINT8)
            if len(dims) != 4 or dims[1:] != (2, NATIVE_SIZE, NATIVE_SIZE):
                raise DataError(f"{path}: shape {dims}, expected (N, 2, 96, 96) stereo image pairs.")
            out = np.empty((dims[0], 1, image_size, image_size), dtype=np.uint8)
            pair = 2 * NATIVE_SIZE * NATIVE_SIZE
            for start in range(0, dims[0], chunk):
                count = min(chunk, dims[0] - start)
                pairs = np.frombuffer(_read_exactly(f, count * pair, path), np.uint8).reshape(count, 2, NATIVE_SIZE, NATIVE_SIZE)
                out[start : start + count] = resize_array(pairs[:, :1], image_size)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} could not be read ({exc}); the file may be corrupt.") from exc
    return out


def load_smallnorb(path: Path, image_size: int = 64, allow_subset: bool = False) -> GridDataset | LabelledDataset:
    """SmallNORB from the folder ``path`` (or the folder of the file ``path``)."""
    directory = Path(path) if Path(path).is_dir() else Path(path).parent
    files = find_files(directory)
    for split, kinds in files.items():
        missing = sorted({"dat", "cat", "info"} - set(kinds))
        if missing:
            raise DataError(f"{directory}: the SmallNORB {split} split lacks its {', '.join(missing)} file(s); "
                            "each split needs -dat, -cat and -info.")
    images, labels = [], []
    for split in sorted(files):
        kinds = files[split]
        pixels = read_left_images(kinds["dat"], image_size)
        category, info = read_labels(kinds["cat"], 1)[:, 0], read_labels(kinds["info"], 4)
        if not len(pixels) == len(category) == len(info):
            raise DataError(f"{directory}: the {split} files disagree on the number of images "
                            f"(dat {len(pixels)}, cat {len(category)}, info {len(info)}).")
        if np.any(info[:, 2] % 2):
            raise DataError(f"{kinds['info']}: azimuths must be even (0, 2, ..., 34); the file is not SmallNORB's.")
        factors = np.column_stack([category, info[:, 0], info[:, 1], info[:, 2] // 2, info[:, 3]])
        if np.any(factors < 0) or np.any(factors >= np.asarray(FACTOR_SIZES)):
            raise DataError(f"{directory}: {split} labels fall outside category 0-4, instance 0-9, elevation 0-8, "
                            "azimuth 0-34, lighting 0-5; the files are not SmallNORB's.")
        images.append(pixels)
        labels.append(factors)
    pixels, factors = np.concatenate(images), np.concatenate(labels)
    index = factors @ grid_strides(FACTOR_SIZES)
    expected = int(np.prod(FACTOR_SIZES))
    if len(np.unique(index)) != len(index):
        raise DataError(f"{directory}: some factor combination appears more than once; the files are not SmallNORB's.")
    sizes = FACTOR_SIZES
    values = (np.arange(sizes[0]), np.arange(sizes[1]), 30.0 + 5.0 * np.arange(sizes[2]), 20.0 * np.arange(sizes[3]),
              np.arange(sizes[4]))  # elevation and azimuth in degrees
    if len(index) == expected:
        grid = np.empty_like(pixels)
        grid[index] = pixels
        return GridDataset(ArrayDataset(grid, name="smallnorb"), "smallnorb", FACTOR_NAMES, FACTOR_SIZES, values)
    if not allow_subset:
        raise DataError(f"{directory} holds {len(index):,} SmallNORB images (splits: {', '.join(sorted(files))}); the full "
                        f"grid has {expected:,}: put the training and testing files in one folder, or pass --allow-subset.")
    return LabelledDataset(ArrayDataset(pixels, name="smallnorb"), factors, FACTOR_NAMES, values,
                           name="smallnorb", factor_sizes=FACTOR_SIZES)
