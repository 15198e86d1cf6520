"""Cars3D (Reed et al. 2015, "Deep Visual Analogy-Making") from the ``.mat`` files of its archive.

Layout relied on (the archive ``nips2015-analogy-data.tar.gz``, folder ``data/cars``, as read by
disentanglement_lib's ``cars3d.py``): one MATLAB (v5) file per car model, 183 in all, each with a
variable ``im`` of shape ``(128, 128, 3, 24, 4)`` uint8: height, width, RGB, 24 azimuths, 4
elevations. Point ``--data`` at the folder holding the ``*.mat`` files.

The grid is elevation (4) x azimuth (24) x object (183), row-major as in disentanglement_lib
(``index = 4392*elevation + 183*azimuth + object``); objects are numbered in sorted file-name order
and their names kept as the factor's values. Images are resized from 128x128 to ``image_size``
(Pillow, Lanczos). A folder with fewer cars is the same grid over fewer objects (``allow_subset``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from betavae.data.arrays import ArrayDataset
from betavae.data.base import GridDataset
from betavae.data.folders import resize_array
from betavae.errors import DataError

FACTOR_NAMES = ("elevation", "azimuth", "object")
NUM_CARS = 183
MESH_SHAPE = (128, 128, 3, 24, 4)


def find_files(directory: Path) -> list[Path]:
    """The ``.mat`` files of ``directory``, sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if p.suffix.lower() == ".mat" and p.is_file()
                  and not p.name.startswith("."))


def is_cars3d(path: Path) -> bool:
    """Whether ``path`` is a folder of Cars3D mesh files (``car_001_mesh.mat``, ...)."""
    path = Path(path)
    return path.is_dir() and any(p.name.lower().endswith("_mesh.mat") for p in find_files(path))


def _read_mesh(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mesh = loadmat(path, variable_names=["im"]).get("im")
    except Exception as exc:  # noqa: BLE001 - scipy's parser raises many types on a damaged file
        raise ValueError(f"not a readable MATLAB v5 file: {' '.join(str(exc).split())}") from exc
    if mesh is None:
        raise ValueError("no variable 'im'")
    if mesh.shape != MESH_SHAPE or mesh.dtype != np.uint8:
        raise ValueError(f"'im' is {mesh.shape} {mesh.dtype}, expected {MESH_SHAPE} uint8")
    return mesh


def load_cars3d(directory: Path, image_size: int = 64, allow_subset: bool = False) -> GridDataset:
    """Cars3D from the folder of ``.mat`` files, validated (every bad file is named in one error)."""
    directory = Path(directory)
    files = find_files(directory)
    if not files:
        raise DataError(f"no .mat files in {directory}; point --data at Cars3D's data/cars folder.")
    if len(files) > NUM_CARS or (len(files) < NUM_CARS and not allow_subset):
        raise DataError(f"{directory} holds {len(files)} .mat files; Cars3D has {NUM_CARS} car models. "
                        + ("Pass --allow-subset to use fewer." if len(files) < NUM_CARS else "Remove the files that are not car models."))
    n = len(files)
    grid = np.empty((4, 24, n, 3, image_size, image_size), dtype=np.uint8)  # (elevation, azimuth, object, C, H, W)
    problems = []
    for i, path in enumerate(files):
        try:
            mesh = _read_mesh(path)
        except ValueError as exc:
            problems.append(f"{path.name} ({exc})")
            continue
        views = mesh.transpose(4, 3, 2, 0, 1).reshape(4 * 24, 3, 128, 128)  # (elevation, azimuth) pairs
        grid[:, :, i] = resize_array(np.ascontiguousarray(views), image_size).reshape(4, 24, 3, image_size, image_size)
    if problems:
        raise DataError(f"{len(problems)} Cars3D file(s) in {directory} could not be read: {'; '.join(problems)}.")
    images = grid.reshape(-1, 3, image_size, image_size)
    values = (np.arange(4), np.arange(24), np.array([p.stem for p in files]))
    return GridDataset(ArrayDataset(images, name="cars3d"), "cars3d", FACTOR_NAMES, (4, 24, n), values)
