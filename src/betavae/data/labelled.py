"""Images with factor labels per image, and reading those labels from a CSV file or a ``.npz``.

A :class:`LabelledDataset` is what metrics get for the user's labelled data or a subset of a
published grid: every image has one factor vector (class indices), but combinations may be missing
or repeated. It offers the same :class:`~betavae.data.base.FactorDataset` methods as a full grid:

* ``sample_factors`` draws the factors of uniformly chosen images (the data's own distribution, so
  every drawn vector exists; on a full grid this is the uniform distribution over the grid);
* ``factors_to_index(factors, rng)`` returns an image with each vector, uniformly among the images
  that share it when ``rng`` is given (the first otherwise); a vector no image has is an error;
* ``sample_factors_fixing(k, values, rng)`` draws images whose factor ``k`` has the given values,
  which is what the BetaVAE and FactorVAE scores need when copied combinations may not exist.

Metrics that read ``(codes, factors)`` (MIG, SAP, DCI, modularity) work on any labelled data;
see docs/data.md for what each metric assumes.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from betavae.data.base import FactorDataset, ImageDataset, ImageStore
from betavae.errors import DataError

#: CSV column names (any case) that hold an image's path relative to the ``--data`` folder.
PATH_COLUMNS = ("path", "file", "filename", "image")


def _row_keys(factors: np.ndarray) -> np.ndarray:
    """One sortable opaque key per row (the row's bytes), for exact lookups of factor vectors."""
    rows = np.ascontiguousarray(factors, dtype=np.int64)
    return rows.view(np.dtype((np.void, 8 * rows.shape[1]))).ravel()


class LabelledDataset(FactorDataset):
    """The images of ``source`` with factor class indices ``factors`` ``(N, K)``, one row per image."""

    def __init__(self, source: ImageDataset, factors: np.ndarray, factor_names: Sequence[str],
                 factor_values: Sequence[np.ndarray], name: str | None = None,
                 factor_sizes: Sequence[int] | None = None):
        factors = np.asarray(factors)
        self.name = name or source.name
        if factors.ndim != 2 or len(factors) != len(source):
            raise DataError(f"{self.name}: factor labels must have shape ({len(source)}, K), one row per image; "
                            f"got {factors.shape}.")
        if not np.issubdtype(factors.dtype, np.integer) or (factors.size and factors.min() < 0):
            raise DataError(f"{self.name}: factor labels must be class indices >= 0, got dtype {factors.dtype}.")
        self.source = source
        self.binary = source.binary
        self.factor_names = tuple(str(n) for n in factor_names)
        self._values = tuple(np.asarray(v) for v in factor_values)
        sizes = tuple(int(s) for s in (factor_sizes if factor_sizes is not None else [len(v) for v in self._values]))
        self.factor_sizes = sizes
        if not len(self.factor_names) == len(self._values) == len(sizes) == factors.shape[1]:
            raise DataError(f"{self.name}: {factors.shape[1]} factor columns but {len(self.factor_names)} names, "
                            f"{len(self._values)} value lists and {len(sizes)} sizes.")
        if factors.size and np.any(factors.max(axis=0) >= np.asarray(sizes)):
            raise DataError(f"{self.name}: factor labels exceed the factor sizes {sizes}.")
        self._factors = factors.astype(np.int64)
        self._factors.setflags(write=False)
        # Exact lookup of factor vectors: images sorted by vector, each vector's first position and count.
        keys = _row_keys(self._factors)
        self._order = np.argsort(keys, kind="stable")
        self._keys, self._starts, self._counts = np.unique(keys[self._order], return_index=True, return_counts=True)
        # Per factor: images sorted by that factor's class, each class's first position and count.
        self._by_factor = []
        for k, size in enumerate(sizes):
            order = np.argsort(self._factors[:, k], kind="stable")
            counts = np.bincount(self._factors[:, k], minlength=size)
            self._by_factor.append((order, np.concatenate([[0], np.cumsum(counts)[:-1]]), counts))

    @property
    def factors(self) -> np.ndarray:
        """Factor class indices of every image, ``(N, K)`` int64 (read-only)."""
        return self._factors

    @property
    def factor_values(self) -> tuple[np.ndarray, ...]:
        return self._values

    @property
    def is_full_grid(self) -> bool:
        return len(self._keys) == len(self) == int(np.prod(self.factor_sizes))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.source.image_shape

    def __len__(self) -> int:
        return len(self.source)

    def images(self, indices: np.ndarray) -> np.ndarray:
        return self.source.images(indices)

    def training_store(self, device: torch.device | str = "cpu") -> ImageStore:
        return self.source.training_store(device)

    def index_to_factors(self, indices: np.ndarray) -> np.ndarray:
        return self._factors[self._check_indices(indices)]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The factors of ``n`` images drawn uniformly (with replacement)."""
        return self._factors[rng.integers(0, len(self), size=n)]

    def factors_to_index(self, factors: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        factors = self._check_factors(factors)
        keys = _row_keys(factors)
        pos = np.searchsorted(self._keys, keys)
        found = pos < len(self._keys)
        found[found] = self._keys[pos[found]] == keys[found]
        if not np.all(found):
            missing = factors[np.argmin(found)]
            described = ", ".join(f"{n}={v}" for n, v in zip(self.factor_names, missing.tolist()))
            raise DataError(
                f"{self.name}: no image has the factors ({described}); these labels do not cover the full "
                "grid, so draw factor vectors of existing images with sample_factors or sample_factors_fixing."
            )
        offset = np.zeros(len(pos), dtype=np.int64) if rng is None else rng.integers(0, self._counts[pos])
        return self._order[self._starts[pos] + offset]

    def sample_factors_fixing(self, factor: int, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64).reshape(-1)
        order, starts, counts = self._by_factor[factor]
        if np.any(values < 0) or np.any(values >= self.factor_sizes[factor]) or np.any(counts[values] == 0):
            bad = values[(values < 0) | (values >= self.factor_sizes[factor])]
            bad = bad if len(bad) else values[counts[values] == 0]
            raise DataError(f"{self.name}: no image has {self.factor_names[factor]} = {int(bad[0])}.")
        return self._factors[order[starts[values] + rng.integers(0, counts[values])]]


def encode_column(name: str, cells: Sequence[object] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class indices ``(N,)`` and sorted distinct values of one factor column.

    Numbers (or strings that all parse as numbers) are sorted numerically, other strings
    alphabetically; class ``i`` is the ``i``-th distinct value.
    """
    array = np.asarray(cells)
    if array.dtype.kind in "US":
        try:
            array = np.array([float(c) for c in array], dtype=np.float64)
        except ValueError:
            pass
    if array.dtype.kind == "b":
        array = array.astype(np.int64)
    if array.dtype.kind in "iuf":
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise DataError(f"factor '{name}' has NaN or infinite values; every image needs a finite label.")
        if array.dtype.kind == "f" and np.all(array == np.round(array)):
            array = array.astype(np.int64)
    elif array.dtype.kind not in "US":
        raise DataError(f"factor '{name}' must hold numbers or strings, got dtype {array.dtype}.")
    values, classes = np.unique(array, return_inverse=True)
    return classes.reshape(-1).astype(np.int64), values


def labels_from_array(array: np.ndarray, names: Sequence[str] | None, source: str) -> tuple[np.ndarray, tuple[str, ...], tuple[np.ndarray, ...]]:
    """Class indices ``(N, K)``, names and values from a raw label array ``(N, K)`` or ``(N,)``."""
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise DataError(f"{source}: factor labels must have shape (N, K), got {array.shape}.")
    if names is None:
        names = [f"factor{k}" for k in range(array.shape[1])]
    names = [str(n) for n in names]
    if len(names) != array.shape[1]:
        raise DataError(f"{source}: {len(names)} factor names for {array.shape[1]} factor columns; give one name per column.")
    columns = [encode_column(n, array[:, k]) for k, n in enumerate(names)]
    return np.stack([c for c, _ in columns], axis=1), tuple(names), tuple(v for _, v in columns)


def read_label_csv(path: Path) -> tuple[list[str] | None, list[str], list[list[str]]]:
    """``(paths or None, factor names, one list of cells per factor)`` from a CSV with a header row.

    A column named path/file/filename/image (any case) names each row's image, relative to the
    ``--data`` folder; every other column is a factor.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"factor label file {path} does not exist; check the path given to --factors.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} could not be read as a UTF-8 CSV file ({exc}).") from exc
    if len(rows) < 2:
        raise DataError(f"{path} needs a header row naming the factors and one row per image.")
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header) or len(set(header)) != len(header):
        raise DataError(f"{path}: header {header} must name every column once.")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path} line {line}: {len(row)} cells, but the header has {len(header)} columns.")
        empty = [header[i] for i, cell in enumerate(row) if not cell.strip()]
        if empty:
            raise DataError(f"{path} line {line}: no value for {', '.join(empty)}; every image needs every factor.")
    path_columns = [i for i, h in enumerate(header) if h.lower() in PATH_COLUMNS]
    if len(path_columns) > 1:
        raise DataError(f"{path}: more than one path column ({', '.join(header[i] for i in path_columns)}); keep one.")
    factor_columns = [i for i in range(len(header)) if i not in path_columns]
    if not factor_columns:
        raise DataError(f"{path} has no factor columns besides the image path.")
    paths = [row[path_columns[0]].strip() for row in rows[1:]] if path_columns else None
    return paths, [header[i] for i in factor_columns], [[row[i].strip() for row in rows[1:]] for i in factor_columns]


def normalise_relative_path(path: str) -> str:
    """A CSV path as the folder loader names images: forward slashes, no leading ``./``."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def labels_from_csv(path: Path, image_paths: list[str] | None, skipped: Sequence[str] = (),
                    ) -> tuple[np.ndarray, tuple[str, ...], tuple[np.ndarray, ...]]:
    """Class indices ``(N, K)``, names and values for the images, from the CSV at ``path``.

    ``image_paths``: the images' paths relative to the data folder, or ``None`` for an array (then
    the rows are in image order, without a path column). Labels of images in ``skipped``
    (unreadable, left out with --skip-bad) are dropped.
    """
    row_paths, names, columns = read_label_csv(path)
    encoded = [encode_column(n, c) for n, c in zip(names, columns)]
    classes = np.stack([c for c, _ in encoded], axis=1)
    values = tuple(v for _, v in encoded)
    if image_paths is None:
        if row_paths is not None:
            raise DataError(f"{path} has a path column, but --data is an array: give the rows in image order "
                            "without a path column.")
        return classes, tuple(names), values
    if row_paths is None:
        raise DataError(f"{path} needs a column named path (or file, filename, image) giving each image's path "
                        "relative to the --data folder.")
    row_paths = [normalise_relative_path(p) for p in row_paths]
    position = {p: i for i, p in enumerate(row_paths)}
    if len(position) != len(row_paths):
        seen: set[str] = set()
        duplicate = next(p for p in row_paths if p in seen or seen.add(p))  # type: ignore[func-returns-value]
        raise DataError(f"{path}: image {duplicate} has more than one row; keep one row per image.")
    unknown = sorted(set(row_paths) - set(image_paths) - set(skipped))
    if unknown:
        raise DataError(f"{path} labels {len(unknown)} image(s) that are not in the data folder: "
                        f"{_listing(unknown)}; paths must be relative to the --data folder.")
    unlabelled = [p for p in image_paths if p not in position]
    if unlabelled:
        raise DataError(f"{path} has no labels for {len(unlabelled)} image(s): {_listing(unlabelled)}; "
                        "add a row for each image or remove them from the folder.")
    rows = np.array([position[p] for p in image_paths], dtype=np.int64)
    # Re-encode so that values no remaining image has (labels of skipped images) leave no empty class.
    kept = [encode_column(n, v[classes[rows, k]]) for k, (n, v) in enumerate(zip(names, values))]
    return np.stack([c for c, _ in kept], axis=1), tuple(names), tuple(v for _, v in kept)


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
