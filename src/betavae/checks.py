"""Checks of values every command takes the same way (seeds, devices, paths to write to, a run's data
against its model), each raising a :class:`~betavae.errors.BetaVAEError` that names the problem and
the fix before anything is written."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from betavae.errors import ConfigError, DataError

#: The largest seed: torch, numpy and the checkpoint files all hold a seed as a signed 64-bit integer.
MAX_SEED = 2**63 - 1
#: Longest file name and path when the file system does not say (Linux's NAME_MAX and PATH_MAX).
NAME_MAX, PATH_MAX = 255, 4096
#: The most characters of a path a message shows.
PATH_SHOWN = 200
#: The highest CUDA device number: torch holds a device index in 8 bits (cuda:128 would wrap to cuda:-128).
MAX_CUDA_INDEX = 127


def one_line(text: str) -> str:
    """``text`` printable on one line of any terminal: bytes that are not UTF-8 (a file name's) as
    ``\\xNN``, control characters (a newline in a name) escaped."""
    try:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def shown(value: Any, limit: int = 40) -> str:
    """``value`` for a one-line message (see :func:`one_line`), at most ``limit`` characters: the
    middle of a longer one is left out."""
    if isinstance(value, (str, os.PathLike)):
        text = one_line(os.fspath(value))
    else:
        big = isinstance(value, int) and abs(value) >= 10**limit
        text = f"a {value.bit_length()}-bit number" if big else repr(value)
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]  # the middle left out


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` if it is a seed (a whole number from 0 to 2**63 - 1), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must be a whole number from 0 to 2**63 - 1 ({MAX_SEED}), got {shown(value)}; "
                          "any seed in that range works, e.g. 0.")
    return value


def check_device(value: Any) -> str:
    """``value`` if it names a device betavae runs on (auto, cpu, cuda, cuda:N), else a ConfigError."""
    index = re.fullmatch(r"cuda:([0-9]{1,4})", value) if isinstance(value, str) else None
    if value not in ("auto", "cpu", "cuda") and not (index and int(index[1]) <= MAX_CUDA_INDEX):
        raise ConfigError(f"unknown device '{shown(value)}'; use auto, cpu, cuda or cuda:N "
                          f"(N a device number from 0 to {MAX_CUDA_INDEX}).")
    return value


def check_data_fits_model(dataset: Any, model: Any, run_dir: str | os.PathLike[str]) -> None:
    """A DataError unless the images of ``dataset`` have the shape ``model`` was trained on (the shape
    its decoder draws), told before any image is encoded: a run whose config.json names other data
    than the model's would otherwise fail inside the first convolution."""
    import torch

    parameter = next(model.parameters())
    with torch.inference_mode():
        trained = tuple(model.decode(torch.zeros(1, model.latents, device=parameter.device,
                                                 dtype=parameter.dtype)).shape[1:])
    given = tuple(int(v) for v in dataset.image_shape)
    if given != trained:
        name = getattr(dataset, "name", "data")
        raise DataError(f"the images of {shown(run_dir, PATH_SHOWN)}'s data ({shown(name)}) have {_shape(given)}, but "
                        f"its model was trained on images with {_shape(trained)}: the run's data has changed since "
                        f"training; set 'data'/'dataset' (and 'image_size') in its config.json back to the data the "
                        f"model was trained on.")


def _shape(shape: tuple[int, ...]) -> str:
    """An image shape ``(C, H, W)`` in words, e.g. ``1 channel of 64x64 pixels``."""
    channels, *size = shape
    return f"{channels} channel{'s' if channels != 1 else ''} of {'x'.join(map(str, size))} pixels"


def check_output_path(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """``path`` as a Path if a directory can be made there; a ConfigError naming the problem otherwise.

    Refused before anything is created: a name that is not valid UTF-8 (betavae writes the path into
    its JSON files and reports), a name or path longer than the file system allows, and a path
    below an existing file.
    """
    text = os.fspath(path)
    if not text:
        raise ConfigError(f"{what} is empty; give a directory, e.g. runs/my-run.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {shown(text, PATH_SHOWN)} is not valid UTF-8 text; betavae writes the path into "
                          "its JSON files and reports, so choose a name of UTF-8 characters.") from None
    if "\x00" in text:
        raise ConfigError(f"{what} {shown(text, PATH_SHOWN)} holds a NUL character; choose another name.")
    target = Path(text)
    name_max, path_max = _limits(target)
    for part in target.parts:
        size = len(part.encode("utf-8"))
        if size > name_max:
            raise ConfigError(f"the name '{shown(part)}' in {what} is {size} bytes long, more than the {name_max} "
                              "the file system allows for one name; choose a shorter name.")
    size = len(os.fsencode(target.absolute()))
    if size >= path_max:
        raise ConfigError(f"{what} {shown(text, PATH_SHOWN)} is {size} bytes long as an absolute path, more than "
                          f"the {path_max - 1} the file system allows; choose a shorter path.")
    for ancestor in target.parents:
        try:
            is_dir = ancestor.is_dir()
            exists = is_dir or ancestor.exists()
        except OSError as exc:  # a loop of symbolic links, a folder it may not read
            raise ConfigError(f"{what} {shown(text, PATH_SHOWN)} cannot be made: {shown(ancestor, PATH_SHOWN)} is "
                              f"not usable ({exc.strerror or exc}); choose another path.") from None
        if is_dir:
            break
        if exists:
            raise ConfigError(f"{what} {shown(text, PATH_SHOWN)} is below {shown(ancestor, PATH_SHOWN)}, which is a "
                              "file, not a folder; choose a path outside it.")
    return target


def check_input_path(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path unless the file system cannot even look it up (a name longer than it allows,
    a loop of symbolic links, a folder it may not read): then a ConfigError. A missing file passes,
    for the reader to report with what it expected there."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{what} {shown(path, PATH_SHOWN)} cannot be read: {reason}; check the path.") from None
    return Path(path)


def _limits(path: Path) -> tuple[int, int]:
    """The file system's longest name and path where ``path`` would be made (its nearest existing folder)."""
    for folder in (path.absolute(), *path.absolute().parents):
        try:
            if folder.is_dir():
                return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
        except (OSError, ValueError):  # a name too long, a folder it may not read: ask its parent
            continue
    return NAME_MAX, PATH_MAX
