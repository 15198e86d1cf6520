"""Atomic file writes: a temporary file in the same directory, flushed, synced, renamed into place.

A kill at any moment leaves either the previous file or the new one, never a partial one. The
directory is synced after the rename too: until it is, a power cut may undo the rename.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator


# ".NAME.PID.tmp" (write_atomic) and ".STEM.PID.tmpSUFFIX" (atomic_output): left behind only by a kill.
_TEMPORARY = re.compile(r"\..+\.\d+\.tmp(\.\w+)?")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is that of a temporary file these functions write (and rename or remove)."""
    return _TEMPORARY.fullmatch(name) is not None


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename, a new file or folder) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform that cannot open directories (renames are durable there or never)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # filesystems without directory sync
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(Path(path), lambda f: f.write(json.dumps(value, indent=2) + "\n"), mode="w")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(Path(path), lambda f: f.write(data))


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path (same suffix) for a writer that wants a file name; renamed to ``path`` on success."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:  # the writer closed it; its data must be on disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
