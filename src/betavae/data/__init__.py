"""Datasets: ground-truth factor grids (dSprites) and the user's own images."""

from __future__ import annotations

from pathlib import Path

from betavae.data.arrays import ArrayDataset, load_array_file, open_npz
from betavae.data.base import GroundTruthDataset, ImageDataset, ImageStore
from betavae.data.dsprites import DSprites
from betavae.errors import DataError

#: Named datasets that need no file (rendered procedurally).
DATASETS = {"dsprites": DSprites}


def load_dataset(name: str | None = None, path: str | Path | None = None) -> ImageDataset:
    """The dataset called ``name``, or the one stored at ``path`` (which wins when both are given).

    A ``.npz`` with the dSprites keys (``imgs``, ``latents_classes``, ``latents_values``) is read as
    the original dSprites with its factors; other ``.npy``/``.npz`` files as plain image arrays.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(f"data file {path} does not exist; check the path given to --data.")
        if path.suffix not in (".npz", ".npy"):
            raise DataError(f"{path}: unsupported data file type '{path.suffix}'; give a .npz or .npy array file.")
        if path.suffix == ".npz" and _is_dsprites_npz(path):
            return DSprites(path)
        return ArrayDataset(load_array_file(path), name=path.stem)
    if name is None:
        raise DataError("no data given: pass --dataset NAME or --data PATH.")
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}, or pass --data PATH.")
    return DATASETS[name]()


def dataset_from_config(config) -> ImageDataset:
    """The training data a :class:`~betavae.training.config.TrainConfig` names."""
    return load_dataset(None if config.data else config.dataset, config.data)


def _is_dsprites_npz(path: Path) -> bool:
    with open_npz(path) as npz:
        return "latents_classes" in npz.files or "imgs" in npz.files


__all__ = [
    "ArrayDataset",
    "DATASETS",
    "DSprites",
    "GroundTruthDataset",
    "ImageDataset",
    "ImageStore",
    "dataset_from_config",
    "load_dataset",
]
