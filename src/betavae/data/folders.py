"""The user's own images: a folder of PNG/JPEG files, decoded once into a compact uint8 array.

Rules (also in docs/data.md):

* **Which files**: every ``.png``, ``.jpg`` and ``.jpeg`` (any case) under the folder, at any depth,
  except hidden files and folders (names starting with ``.``, e.g. macOS ``._x.png`` resource forks).
  Image ``i`` is the ``i``-th path in sorted order of the path relative to the folder.
* **Size**: each image is scaled (Pillow, Lanczos filter) so that its *shorter* side equals
  ``image_size``, keeping its aspect ratio, then the longer side is cropped to ``image_size`` around
  the centre (the crop starts at ``floor((longer - image_size) / 2)``). Nothing is padded or stretched.
* **Channels**: 16- and 32-bit grey images are scaled to 8 bits; transparency is composited onto black. If every image is grey (a grey mode, or RGB
  with R = G = B everywhere) the dataset has 1 channel; otherwise 3, and grey images are repeated
  into the three channels.
* **Bad files**: a file that cannot be opened and fully decoded (corrupt, truncated, not really an
  image, unreadable) is never silently dropped: all of them are listed in one error, or, with
  ``skip_bad``, left out with their count and names printed.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from betavae.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}


def list_image_files(root: Path) -> list[str]:
    """Paths (relative, ``/``-separated, sorted) of the images under ``root``, hidden ones excluded."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(directory, name).relative_to(root).as_posix())
    return sorted(found)


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Scale so that the shorter side is ``size`` (Lanczos), then centre-crop the longer side."""
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _to_rgb_or_grey(image: Image.Image) -> Image.Image:
    """Mode ``L`` or ``RGB``, transparency composited onto black."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("1", "L"):
        return image.convert("L")
    if image.mode in ("LA", "La"):
        grey, alpha = (np.asarray(band, dtype=np.uint16) for band in image.convert("LA").split())
        return Image.fromarray(((grey * alpha + 127) // 255).astype(np.uint8), "L")
    if "A" in image.getbands() or image.mode == "RGBa":
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        return Image.fromarray(((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8), "RGB")
    return image.convert("RGB")


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 ``(size, size, 3)`` (grey repeated) or ``(size, size)`` for grey."""
    with Image.open(path) as image:
        image.draft(None, (size, size))  # JPEG: decode at a reduced scale when the file is much larger
        image.load()
        if image.width < 1 or image.height < 1:
            raise ValueError("image has no pixels")
        image = fit_square(_to_rgb_or_grey(image), size)
    return np.asarray(image, dtype=np.uint8)


def decode_folder(root: Path, size: int, skip_bad: bool = False) -> tuple[np.ndarray, list[str], list[str]]:
    """Decode every image under ``root`` (rules in the module docstring).

    Returns ``(images (N, C, size, size) uint8, relative paths of the N images, skipped paths)``.
    Decoding runs in a thread pool (Pillow releases the GIL while it decodes and resizes).
    """
    root = Path(root)
    files = list_image_files(root)
    if not files:
        raise DataError(f"no PNG or JPEG images found in {root} (searched every subfolder); "
                        "point --data at the folder that holds your images.")
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)  # filled in place: no second copy
    grey = np.zeros(len(files), dtype=bool)
    problems: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            pixels = decode_image(root / files[i], size)
        except Exception as exc:  # noqa: BLE001 - image decoders raise many types; each is reported
            problems[i] = f"{files[i]} ({' '.join(str(exc).split()) or type(exc).__name__})"
            return
        if pixels.ndim == 2:
            images[i] = pixels[None]
            grey[i] = True
        else:
            images[i] = pixels.transpose(2, 0, 1)
            grey[i] = bool(np.all(pixels[..., 0] == pixels[..., 1]) and np.all(pixels[..., 1] == pixels[..., 2]))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(len(files))))
    bad = sorted(problems)
    if bad:
        listed = "; ".join(problems[i] for i in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        if not skip_bad:
            raise DataError(f"{len(bad)} of {len(files)} images in {root} could not be read: {listed}. "
                            "Fix or remove them, or pass --skip-bad to train without them.")
        if len(bad) == len(files):
            raise DataError(f"none of the {len(files)} images in {root} could be read: {listed}.")
        print(f"betavae: skipped {len(bad)} of {len(files)} images in {root} that could not be read "
              f"(--skip-bad): {listed}", file=sys.stderr, flush=True)
    keep = np.setdiff1d(np.arange(len(files)), bad)
    if bad:
        images = images[keep]
    if np.all(grey[keep]):
        images = np.ascontiguousarray(images[:, :1])
    return images, [files[i] for i in keep], [files[i] for i in bad]


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images ``(N, C, H, W)`` brought to ``(N, C, size, size)`` by the same rule as folders."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for i in range(n):
        if c == 1:
            out[i, 0] = np.asarray(fit_square(Image.fromarray(images[i, 0], "L"), size))
        else:
            out[i] = np.asarray(fit_square(Image.fromarray(images[i].transpose(1, 2, 0), "RGB"), size)).transpose(2, 0, 1)
    return out
