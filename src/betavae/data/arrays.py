"""Images held as arrays: in memory (the user's ``.npy``/``.npz``, decoded folders) or memory-mapped.

``np.load(path, mmap_mode="r")`` maps a ``.npy`` but silently reads a ``.npz`` member whole, which
for MPI3D (1,036,800 RGB images, 12.7 GB as uint8) is not an option. :func:`npz_member_array` maps
a member by hand: ``np.savez`` stores each member uncompressed as a complete ``.npy`` file inside
the zip archive, so its array bytes sit at a fixed offset of the archive (after the zip local
header, ``30 + len(name) + len(extra)`` bytes from the member's header offset, and the ``.npy``
header) and ``np.memmap`` can map them there. A compressed member (``np.savez_compressed``) cannot be
mapped: it is decompressed once, streaming with bounded memory, into the cache directory as a plain
``.npy`` and mapped from there.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import sys
import tokenize
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from betavae.data.base import ImageDataset, ImageStore
from betavae.data.cache import cache_dir
from betavae.errors import DataError
from betavae.files import write_atomic

# What numpy raises on a damaged .npy header: its parser tokenizes and evaluates the header's text.
_HEADER_ERRORS = (ValueError, SyntaxError, tokenize.TokenError, struct.error)


class ArrayDataset(ImageDataset):
    """Images from an array ``(N, H, W)`` or ``(N, H, W, C)`` / ``(N, C, H, W)`` with C in {1, 3}.

    uint8 arrays are read as 0..255; float arrays must lie in [0, 1]. Images whose pixels are all 0
    or 1 are treated as binary (bit-packed in memory, Bernoulli likelihood exact).
    """

    def __init__(self, images: np.ndarray, name: str = "array", paths: list[str] | None = None):
        self.name = name
        #: For images decoded from a folder: each image's path relative to that folder.
        self.paths = paths
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

    def pixels(self) -> np.ndarray:
        """Every image as uint8 ``(N, C, H, W)`` in 0..255 (binary images as 0 and 255)."""
        return self._uint8 * np.uint8(255) if self.binary else self._uint8

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
            with open(path, "rb") as f:
                magic = f.read(len(np.lib.format.MAGIC_PREFIX))
            if magic != np.lib.format.MAGIC_PREFIX:  # else NumPy would try it as a pickle, and say so
                raise DataError(f"{path} is not a .npy array file (it does not begin as np.save writes one); save "
                                "the images with numpy.save, or give a folder of image files.")
            return np.load(path, allow_pickle=False)
        with open_npz(path) as npz:
            for key in ("images", "imgs", "x"):
                if key in npz.files:
                    return npz[key]
            raise DataError(
                f"{path}: no image array found; store it under the key 'images' (found {sorted(npz.files)})."
            )
    except MemoryError as exc:  # a header claiming more than memory holds (a damaged file claims petabytes)
        raise DataError(f"{path} claims an array too large for this machine's memory ({exc}); the file may be "
                        "damaged. Check its shape with numpy.load(path, mmap_mode='r').shape.") from None
    except (OSError, zipfile.BadZipFile, EOFError, *_HEADER_ERRORS) as exc:
        raise pickle_error(path, exc) from exc


def _npy_header(f, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from the ``.npy`` header at ``f``'s position."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{path}: .npy format version {version} is not supported; save with numpy's default np.save/np.savez.")
    except _HEADER_ERRORS as exc:
        raise DataError(f"{path}: not a valid .npy array ({exc}); the file may be truncated or corrupt.") from exc
    if dtype.hasobject:
        raise DataError(f"{path} holds pickled Python objects, which betavae never loads (they can run code); save plain numeric arrays.")
    return shape, fortran, dtype


def memmap_npy(path: Path, offset: int = 0) -> np.ndarray:
    """Map the ``.npy`` array that starts ``offset`` bytes into ``path`` (copy-on-write: never written)."""
    with open(path, "rb") as f:
        f.seek(offset)
        shape, fortran, dtype = _npy_header(f, path)
        data_offset = f.tell()
    nbytes = int(np.prod(shape)) * dtype.itemsize
    size = Path(path).stat().st_size
    if data_offset + nbytes > size:
        raise DataError(f"{path} is truncated: its array {shape} {dtype} needs {data_offset + nbytes:,} bytes, "
                        f"the file has {size:,}. Download or copy it again.")
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="c", offset=data_offset, shape=shape, order="F" if fortran else "C")


def npz_member_array(path: Path, key: str) -> np.ndarray:
    """Member ``key`` of the ``.npz`` at ``path``, memory-mapped (see the module docstring)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            if key not in names:
                raise DataError(f"{path} has no array '{key}' (it has {sorted(names)}).")
            info = archive.getinfo(key + ".npy")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as f:
                    f.seek(info.header_offset)
                    local = f.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise DataError(f"{path}: damaged zip entry for '{key}'; the file may be corrupt.")
                name_length, extra_length = struct.unpack("<HH", local[26:30])
                return memmap_npy(path, info.header_offset + 30 + name_length + extra_length)
            return memmap_npy(_extract_member(path, archive, info))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path} could not be read as a .npz archive ({exc}); the file may be truncated or corrupt.") from exc


def _extract_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Path:
    """Decompress a compressed ``.npz`` member once into the cache directory; its path there."""
    stat = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{info.filename}".encode()).hexdigest()[:16]
    directory = cache_dir()
    target = directory / f"npz-{path.stem}-{Path(info.filename).stem}-{tag}.npy"
    if target.is_file() and target.stat().st_size == info.file_size:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < info.file_size:
        raise DataError(f"{path} stores '{Path(info.filename).stem}' compressed; reading it by index needs it "
                        f"decompressed once ({info.file_size / 1e9:.1f} GB) but {directory} has {free / 1e9:.1f} GB free. "
                        "Set BETAVAE_CACHE to a larger disk, or re-save the file with np.savez (uncompressed).")
    print(f"betavae: {path} is compressed; decompressing '{Path(info.filename).stem}' once "
          f"({info.file_size / 1e9:.1f} GB) to {target} so it can be read by index", file=sys.stderr, flush=True)

    def copy(f) -> None:
        with archive.open(info) as member:
            shutil.copyfileobj(member, f, 1 << 24)

    write_atomic(target, copy)
    return target


def channels_last_store(num_images: int, hwc: tuple[int, int, int], read: Callable[[int, int], np.ndarray],
                        device: torch.device | str, chunk: int = 8192) -> ImageStore:
    """An :class:`ImageStore` ``(N, H, W, C)`` uint8 on ``device``, filled by ``read(start, stop)`` in chunks.

    Chunks bound the host memory used on the way to an accelerator to one chunk.
    """
    h, w, c = hwc
    data = torch.empty((num_images, h, w, c), dtype=torch.uint8, device=device)
    for start in range(0, num_images, chunk):
        stop = min(num_images, start + chunk)
        data[start:stop].copy_(torch.from_numpy(np.ascontiguousarray(read(start, stop))))
    return ImageStore(data, (c, h, w), packed=False, channels_last=True)


class MappedImages(ImageDataset):
    """uint8 images ``(N, H, W, C)`` read by index from a memory-mapped array; nothing is loaded up front.

    On the CPU the training store maps the same file (no copy: the operating system pages images in
    and out as batches touch them); on an accelerator it is copied there in chunks.
    """

    def __init__(self, array: np.ndarray, name: str):
        if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.dtype != np.uint8:
            raise DataError(f"{name}: expected uint8 images (N, H, W, C) with 1 or 3 channels, got {array.shape} {array.dtype}.")
        self.array = array
        self.name = name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        n, h, w, c = self.array.shape
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def images(self, indices: np.ndarray) -> np.ndarray:
        rows = self.array[np.asarray(indices, dtype=np.int64)]
        return rows.transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    def training_store(self, device: torch.device | str = "cpu") -> ImageStore:
        if torch.device(device).type == "cpu" and isinstance(self.array, np.memmap):
            return ImageStore(torch.from_numpy(self.array), self.image_shape, packed=False, channels_last=True)
        n, h, w, c = self.array.shape
        return channels_last_store(n, (h, w, c), lambda start, stop: self.array[start:stop], device)
