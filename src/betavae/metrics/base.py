"""The two-step shape every metric shares: draw dataset samples, then score their codes.

A :class:`Metric` is a frozen dataclass of protocol parameters with two methods:

* ``draw(dataset, rng) -> Draw``: every random choice of images (flat dataset indices, any shape)
  plus the factors and labels the score needs. No encoder is involved.
* ``score(draw, encoded, rng) -> dict[str, float]``: the array maths on the codes of those images,
  through the metric's public ``*_from_codes`` function.

``compute`` runs the two with a fresh encoding of every drawn image (the plain path); ``evaluate``
runs every metric's ``draw`` first, encodes each distinct image once and hands each ``score`` the
same codes by lookup. Both give identical numbers for an encoder whose output for an image does not
depend on the other images in its batch: every forward pass here sees exactly ``batch_size``
images (the last batch is padded), because some kernels pick different summation orders for
different batch shapes.
"""

from __future__ import annotations

import ctypes
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import numpy as np

from betavae.data.base import ImageDataset
from betavae.errors import ConfigError, DataError
from betavae.metrics.utils import as_generator

#: Images per encoder call in ``evaluate`` and in every sampling function.
DEFAULT_BATCH_SIZE = 1024


@runtime_checkable
class PosteriorEncoder(Protocol):
    """An encoder that also exposes its diagonal Gaussian posterior (see ``encoder_fn``)."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def codes_and_posterior(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(codes, mu, logvar)``, each ``(n, D)``, from one forward pass."""
        ...


Encode = Callable[[np.ndarray], np.ndarray]


@dataclass
class Draw:
    """The images a metric needs, by flat dataset index, and what its score needs to know of them.

    ``indices[name]`` may have any shape ``S``; ``factors[name]`` then has shape ``S + (K,)``.
    """

    indices: dict[str, np.ndarray]
    factors: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    factor_sizes: tuple[int, ...] = ()

    @property
    def num_images(self) -> int:
        """Images requested (with repeats)."""
        return int(sum(v.size for v in self.indices.values()))


@dataclass
class Encoded:
    """Codes of a set of images, shape ``S + (D,)``; ``mu``/``logvar`` when the encoder exposes them."""

    codes: np.ndarray
    mu: np.ndarray | None = None
    logvar: np.ndarray | None = None

    def reshape(self, shape: tuple[int, ...]) -> "Encoded":
        def r(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a.reshape(shape + (a.shape[-1],))

        return Encoded(r(self.codes), r(self.mu), r(self.logvar))  # type: ignore[arg-type]

    def codes_only(self) -> "Encoded":
        return Encoded(self.codes)

    def take(self, positions: np.ndarray) -> "Encoded":
        def t(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[positions]

        return Encoded(t(self.codes), t(self.mu), t(self.logvar))  # type: ignore[arg-type]


def require_factors(dataset: ImageDataset, metric: str) -> None:
    """Supervised metrics need a ground-truth dataset; say so before any work starts."""
    if not getattr(dataset, "has_factors", False):
        raise DataError(
            f"metric '{metric}' needs ground-truth factors but dataset '{getattr(dataset, 'name', dataset)}' "
            "has none; use a dataset with factors (e.g. dsprites) or only metrics=['unsupervised']."
        )


def sample_factors(dataset: ImageDataset, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Factor vectors of the dataset's images (uniform over a full grid), shape ``shape + (K,)``."""
    factors = dataset.sample_factors(int(np.prod(shape)), rng)  # type: ignore[attr-defined]
    return factors.reshape(shape + (factors.shape[1],))


def sample_factors_fixing(dataset: ImageDataset, rng: np.random.Generator, factor: np.ndarray,
                          values: np.ndarray) -> np.ndarray:
    """Factor vectors ``(P, B, K)``: row p has factor ``factor[p]`` equal to ``values[p]`` ``(P, B)``
    and its other factors drawn as :meth:`FactorDataset.sample_factors_fixing` draws them."""
    num_points, group = values.shape
    out = np.empty((num_points, group, dataset.num_factors), dtype=np.int64)  # type: ignore[attr-defined]
    for k in np.unique(factor):  # the dataset fixes one factor per call
        rows = np.flatnonzero(factor == k)
        drawn = dataset.sample_factors_fixing(int(k), values[rows].reshape(-1), rng)  # type: ignore[attr-defined]
        out[rows] = drawn.reshape(len(rows), group, -1)
    return out


def factor_indices(dataset: ImageDataset, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of images with factors ``S + (K,)``, shape ``S`` (``rng`` picks among images
    sharing a factor vector in labelled data; a full grid has one image each)."""
    flat = dataset.factors_to_index(factors.reshape(-1, factors.shape[-1]), rng)  # type: ignore[attr-defined]
    return np.asarray(flat, dtype=np.int64).reshape(factors.shape[:-1])


def _as_array(value: Any, rows: int, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[0] != rows:
        raise DataError(
            f"the encoder returned {what} of shape {array.shape} for {rows} images; it must return "
            f"one row per image, shape ({rows}, D)."
        )
    return array


def encode_images(encode: Encode, images: np.ndarray) -> Encoded:
    """Codes for float32 ``images`` ``(n, C, H, W)``, with the posterior when ``encode`` exposes it."""
    full = getattr(encode, "codes_and_posterior", None)
    if full is not None:
        codes, mu, logvar = full(images)
        return Encoded(_as_array(codes, len(images), "codes"), _as_array(mu, len(images), "mu"),
                       _as_array(logvar, len(images), "logvar"))
    return Encoded(_as_array(encode(images), len(images), "codes"))


#: ``progress(done, total)``: images encoded so far of those asked for.
EncodeProgress = Callable[[int, int], None]
#: Images encoded between two hand-backs of freed memory (see :func:`_return_freed_memory`).
TRIM_EVERY_IMAGES = 65536


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


def _return_freed_memory() -> None:
    """Hand memory the allocator holds free back to the system (glibc's ``malloc_trim``; elsewhere
    nothing). Encoding allocates and frees the same large buffers thousands of times, and glibc keeps
    them in per-thread heaps where they fragment: over dSprites' 724k images the process grew to
    2-3 GB, against about 1.1 GB when trimmed every 64k images (one call per 64k images; trimming
    after every batch cost 8-20% of the encoding speed, so it is not done that often)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def encode_indices(dataset: ImageDataset, encode: Encode, indices: np.ndarray, batch_size: int,
                   posterior: bool = True, progress: EncodeProgress | None = None) -> Encoded:
    """Codes ``(n, D)`` for flat ``indices`` ``(n,)``, in forward passes of exactly ``batch_size`` images
    (``mu``/``logvar`` too when the encoder exposes them and ``posterior`` is set); ``progress`` is
    told after each batch."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    dataset.prepare_reads(len(indices))
    parts: list[Encoded] = []
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        n = len(batch)
        if n < batch_size:  # pad with the last image so every pass has one batch shape
            batch = np.concatenate([batch, np.full(batch_size - n, batch[-1])])
        encoded = encode_images(encode, np.asarray(dataset.images(batch), dtype=np.float32)).take(slice(0, n))
        parts.append(encoded if posterior else encoded.codes_only())
        if (start // batch_size + 1) % max(1, TRIM_EVERY_IMAGES // batch_size) == 0:
            _return_freed_memory()
        if progress is not None:
            progress(start + n, len(indices))
    if not parts:
        raise DataError("no images to encode: every sample count must be at least 1.")
    widths = {p.codes.shape[1] for p in parts}
    if len(widths) != 1:
        raise DataError(f"the encoder returned codes of different widths {sorted(widths)}; it must be deterministic in shape.")

    def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays)  # type: ignore[arg-type]

    return Encoded(cat([p.codes for p in parts]), cat([p.mu for p in parts]), cat([p.logvar for p in parts]))  # type: ignore[arg-type]


class CodeTable:
    """Codes of distinct dataset images, looked up by flat index (the cache ``evaluate`` shares)."""

    def __init__(self, dataset: ImageDataset, encode: Encode, indices: np.ndarray, batch_size: int,
                 posterior: bool = True, progress: EncodeProgress | None = None):
        self.indices = np.unique(np.asarray(indices, dtype=np.int64))  # sorted, for searchsorted
        self.encoded = encode_indices(dataset, encode, self.indices, batch_size, posterior, progress)

    def __len__(self) -> int:
        return len(self.indices)

    def lookup(self, indices: np.ndarray, posterior: bool = True) -> Encoded:
        """Codes for ``indices`` of any shape ``S``, shape ``S + (D,)`` (with the posterior if kept
        and ``posterior`` is set)."""
        indices = np.asarray(indices, dtype=np.int64)
        positions = np.searchsorted(self.indices, indices.reshape(-1))
        if np.any(positions >= len(self.indices)) or np.any(self.indices[np.minimum(positions, len(self) - 1)] != indices.reshape(-1)):
            raise KeyError("an index was not encoded in this table")
        encoded = self.encoded if posterior else self.encoded.codes_only()
        return encoded.take(positions).reshape(indices.shape)


def encode_draw(dataset: ImageDataset, encode: Encode, draw: Draw, batch_size: int,
                posterior: bool = True) -> dict[str, Encoded]:
    """Encode every image of ``draw`` afresh, repeats included, in one stream of batches."""
    flat = np.concatenate([idx.reshape(-1) for idx in draw.indices.values()])
    encoded = encode_indices(dataset, encode, flat, batch_size, posterior)
    out, start = {}, 0
    for name, idx in draw.indices.items():
        out[name] = encoded.take(slice(start, start + idx.size)).reshape(idx.shape)
        start += idx.size
    return out


@dataclass(frozen=True)
class Metric(ABC):
    """Protocol parameters of one metric, and its draw and score steps (see the module docstring)."""

    name: ClassVar[str]
    #: The value a sweep ranks by when only the metric's name is given (``dci`` -> ``disentanglement``).
    primary_value: ClassVar[str]
    #: Whether the metric needs ground-truth factors (``dataset.has_factors``).
    needs_factors: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ConfigError(f"{self.name}: {f.name} must be at least 1, got {value}.")

    @property
    def needs_posterior(self) -> bool:
        """Whether ``score`` needs ``mu``/``logvar``, i.e. an encoder from ``encoder_fn``."""
        return False

    @property
    def uses_posterior(self) -> bool:
        """Whether ``score`` uses ``mu``/``logvar`` when the encoder gives them (else they are dropped)."""
        return self.needs_posterior

    @abstractmethod
    def draw(self, dataset: ImageDataset, rng: np.random.Generator) -> Draw:
        """All random image choices of the metric."""

    @abstractmethod
    def score(self, draw: Draw, encoded: dict[str, Encoded], rng: np.random.Generator) -> dict[str, float]:
        """The metric's values from the codes of ``draw``'s images."""

    def check(self, dataset: ImageDataset, encode: Encode) -> None:
        """Raise before any work when the dataset or encoder cannot serve this metric."""
        if self.needs_factors:
            require_factors(dataset, self.name)
        if self.needs_posterior and not isinstance(encode, PosteriorEncoder):
            raise ConfigError(
                f"metric '{self.name}' with these parameters needs the posterior (mu, logvar); pass an "
                "encoder made by betavae.metrics.encoder_fn(model)."
            )

    def compute(self, dataset: ImageDataset, encode: Encode, rng: np.random.Generator | int = 0,
                batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, float]:
        """Draw, encode every drawn image afresh, score."""
        self.check(dataset, encode)
        rng = as_generator(rng)
        draw = self.draw(dataset, rng)
        return self.score(draw, encode_draw(dataset, encode, draw, batch_size, self.uses_posterior), rng)


@dataclass(frozen=True)
class TrainTestMetric(Metric):
    """A metric scored on independent train and test samples of factor vectors (SAP, DCI, modularity)."""

    num_train: int = 10_000
    num_test: int = 5_000

    def draw(self, dataset: ImageDataset, rng: np.random.Generator) -> Draw:
        train = sample_factors(dataset, rng, (self.num_train,))
        test = sample_factors(dataset, rng, (self.num_test,))
        return Draw(indices={"train": factor_indices(dataset, train, rng), "test": factor_indices(dataset, test, rng)},
                    factors={"train": train, "test": test})
