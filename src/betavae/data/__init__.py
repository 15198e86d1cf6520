"""Datasets: ground-truth factor grids, standard files users already have, and the user's own images.

``load_dataset`` is the one entry point; what each ``--data`` path is read as (docs/data.md):

* a folder: SmallNORB's files or Cars3D's ``.mat`` files when it holds them, otherwise the user's
  PNG/JPEG images (any nesting);
* ``.h5``/``.hdf5``: 3D Shapes; ``.npz``: the original dSprites, an MPI3D file (``mpi3d_*.npz``) or
  an image array; ``.npy``: an image array; a SmallNORB ``-dat/-cat/-info.mat[.gz]`` file: its folder.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from betavae.data.arrays import ArrayDataset, load_array_file, open_npz, pickle_error
from betavae.data.base import (IMAGE_SIZES, FactorDataset, GridDataset, GroundTruthDataset, ImageDataset,
                               ImageStore, ProceduralStore)
from betavae.data.cars3d import is_cars3d, load_cars3d
from betavae.data.colored_shapes import ColoredShapes
from betavae.data.dsprites import DSprites
from betavae.data.folders import decode_folder, resize_array
from betavae.data.labelled import LabelledDataset, labels_from_array, labels_from_csv
from betavae.data.mpi3d import is_mpi3d_file, load_mpi3d
from betavae.data.shapes3d import load_shapes3d
from betavae.data.smallnorb import is_smallnorb, load_smallnorb
from betavae.data.variants import ColorDSprites, NoisyDSprites, ScreamDSprites
from betavae.errors import DataError

#: Named datasets that need no file (rendered procedurally).
DATASETS = {
    "dsprites": DSprites,
    "color-dsprites": ColorDSprites,
    "noisy-dsprites": NoisyDSprites,
    "scream-dsprites": ScreamDSprites,
    "colored-shapes": ColoredShapes,
}

#: Image size of folders, SmallNORB and Cars3D when none is given (the size of the published grids).
DEFAULT_IMAGE_SIZE = 64


def load_dataset(name: str | None = None, path: str | Path | None = None, *, image_size: int | None = None,
                 factors: str | Path | None = None, allow_subset: bool = False, skip_bad: bool = False) -> ImageDataset:
    """The dataset called ``name``, or the one stored at ``path`` (which wins when both are given).

    ``image_size``: side of the square images (32, 64 or 128) for data that is resized (folders,
    arrays, SmallNORB, Cars3D); fixed-size datasets accept only their own size. ``factors``: a CSV
    of factor labels for the user's folder or array. ``allow_subset``: accept a standard file with
    fewer images than published. ``skip_bad``: leave out unreadable images of a folder (reported).
    """
    if image_size is not None and image_size not in IMAGE_SIZES:
        raise DataError(f"image size {image_size} is not supported; use one of {', '.join(map(str, IMAGE_SIZES))}.")
    if path is None:
        if name is None:
            raise DataError("no data given: pass --dataset NAME or --data PATH.")
        if name not in DATASETS:
            raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}, or pass --data PATH.")
        if factors is not None:
            raise DataError(f"--factors labels the user's own --data; dataset '{name}' already knows its factors.")
        return _fixed_size(DATASETS[name](), image_size)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path given to --data.")
    standard = _standard_file(path, image_size, allow_subset)
    if standard is not None:
        if factors is not None:
            raise DataError(f"{path} is {standard.name}, which has its own factors; drop --factors.")
        return standard
    if path.is_dir():
        size = image_size or DEFAULT_IMAGE_SIZE
        images, paths, skipped = decode_folder(path, size, skip_bad)
        dataset = ArrayDataset(images, name=path.name or "images", paths=paths)
        if factors is None:
            return dataset
        labels, names, values = labels_from_csv(Path(factors), paths, skipped)
        return LabelledDataset(dataset, labels, names, values)
    if path.suffix not in (".npz", ".npy"):
        raise DataError(f"{path}: unsupported data file type '{path.suffix}'; give a folder of PNG/JPEG images, "
                        "a .npy/.npz image array, 3dshapes.h5, an MPI3D .npz, SmallNORB or Cars3D files.")
    return _array_file(path, image_size, factors)


def dataset_from_config(config) -> ImageDataset:
    """The training data a :class:`~betavae.training.config.TrainConfig` names."""
    return load_dataset(
        None if config.data else config.dataset,
        config.data,
        image_size=getattr(config, "image_size", None),
        factors=getattr(config, "factors", None),
        allow_subset=getattr(config, "allow_subset", False),
        skip_bad=getattr(config, "skip_bad", False),
    )


def _fixed_size(dataset: ImageDataset, image_size: int | None) -> ImageDataset:
    size = dataset.image_shape[-1]
    if image_size is not None and image_size != size:
        raise DataError(f"{dataset.name} images are {size}x{size}; --image-size {image_size} cannot apply to them "
                        "(drop --image-size).")
    return dataset


def _standard_file(path: Path, image_size: int | None, allow_subset: bool) -> ImageDataset | None:
    """The published dataset stored at ``path``, or ``None`` when ``path`` is not one."""
    if is_smallnorb(path):
        return load_smallnorb(path, image_size or DEFAULT_IMAGE_SIZE, allow_subset)
    if is_cars3d(path):
        return load_cars3d(path, image_size or DEFAULT_IMAGE_SIZE, allow_subset)
    if path.is_dir():
        return None
    if path.suffix.lower() in (".h5", ".hdf5"):
        return _fixed_size(load_shapes3d(path, allow_subset), image_size)
    if path.suffix == ".npz" and is_mpi3d_file(path):
        return _fixed_size(load_mpi3d(path, allow_subset), image_size)
    if path.suffix == ".npz" and _is_dsprites_npz(path):
        return _fixed_size(DSprites(path), image_size)
    if path.suffix.lower() == ".mat":
        raise DataError(f"{path}: a .mat file is read only as part of SmallNORB (smallnorb-*-dat/cat/info.mat) or "
                        "Cars3D; for Cars3D point --data at the folder holding all its .mat files.")
    return None


def _array_file(path: Path, image_size: int | None, factors: str | Path | None) -> ImageDataset:
    """The user's ``.npy``/``.npz`` image array, resized if asked, with its factor labels if any."""
    images = load_array_file(path)
    dataset = ArrayDataset(images, name=path.stem)
    if image_size is not None and dataset.image_shape[1:] != (image_size, image_size):
        dataset = ArrayDataset(resize_array(dataset.pixels(), image_size), name=path.stem)
    array_labels, names = _npz_factors(path) if path.suffix == ".npz" else (None, None)
    if factors is not None and array_labels is not None:
        raise DataError(f"{path} holds a 'factors' array and --factors was given too; use one of them.")
    if factors is not None:
        labels, names, values = labels_from_csv(Path(factors), None)
        source = f"{factors}"
    elif array_labels is not None:
        labels, names, values = labels_from_array(array_labels, names, f"{path}: 'factors'")
        source = f"{path}: 'factors'"
    else:
        return dataset
    if len(labels) != len(dataset):
        raise DataError(f"{source} has {len(labels)} label rows but {path} holds {len(dataset)} images; give one row per image.")
    return LabelledDataset(dataset, labels, names, values)


def _npz_factors(path: Path) -> tuple[np.ndarray | None, list[str] | None]:
    """The optional ``factors`` ``(N, K)`` and ``factor_names`` ``(K,)`` arrays of a ``.npz``."""
    try:
        with open_npz(path) as npz:
            if "factors" not in npz.files:
                if "factor_names" in npz.files:
                    raise DataError(f"{path} has 'factor_names' but no 'factors' array; add the labels as 'factors' (N, K).")
                return None, None
            labels = npz["factors"]
            names = [str(n) for n in np.asarray(npz["factor_names"]).reshape(-1)] if "factor_names" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise pickle_error(path, exc) from exc
    return labels, names


def _is_dsprites_npz(path: Path) -> bool:
    if path.name.startswith("dsprites_ndarray"):
        return True
    with open_npz(path) as npz:
        return "latents_classes" in npz.files or "latents_values" in npz.files


__all__ = [
    "ArrayDataset",
    "ColorDSprites",
    "ColoredShapes",
    "DATASETS",
    "DSprites",
    "FactorDataset",
    "GridDataset",
    "GroundTruthDataset",
    "IMAGE_SIZES",
    "ImageDataset",
    "ImageStore",
    "LabelledDataset",
    "NoisyDSprites",
    "ProceduralStore",
    "ScreamDSprites",
    "dataset_from_config",
    "load_dataset",
]
