"""An on-disk array cache that never serves a corrupt or partial file.

Each entry is a raw ``.npy`` array beside a ``.json`` manifest holding its shape, dtype, size and
SHA-256. Both are written to temporary files and renamed into place (manifest last), so a kill
during a write leaves either the old entry or none. On load the checksum is verified; any mismatch
means the entry is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from betavae.files import write_atomic


def cache_dir() -> Path:
    """``$BETAVAE_CACHE`` if set, else ``~/.cache/betavae``."""
    env = os.environ.get("BETAVAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "betavae"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def load_cached(name: str, directory: Path | None = None) -> np.ndarray | None:
    """The cached array ``name`` if present and intact, else ``None`` (with a note on stderr)."""
    directory = directory or cache_dir()
    data_path, manifest_path = directory / f"{name}.npy", directory / f"{name}.json"
    if not manifest_path.exists() or not data_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        problem = None
        if data_path.stat().st_size != manifest["file_bytes"]:
            problem = "its size does not match its manifest (partial write?)"
        elif _sha256(data_path) != manifest["sha256"]:
            problem = "its checksum does not match (corrupted file)"
        if problem is None:
            array = np.load(data_path, allow_pickle=False)
            if list(array.shape) != manifest["shape"] or str(array.dtype) != manifest["dtype"]:
                problem = "its shape or dtype does not match its manifest"
            else:
                return array
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"it could not be read ({exc})"
    print(f"betavae: cache entry {data_path} is unusable: {problem}; rebuilding it.", file=sys.stderr)
    return None


def store_cached(name: str, array: np.ndarray, directory: Path | None = None) -> Path:
    """Write ``array`` as cache entry ``name`` atomically; returns the data path."""
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    data_path, manifest_path = directory / f"{name}.npy", directory / f"{name}.json"
    if manifest_path.exists():
        manifest_path.unlink()  # an entry without manifest is never trusted
    write_atomic(data_path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))
    manifest = {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "file_bytes": data_path.stat().st_size,
        "sha256": _sha256(data_path),
    }
    write_atomic(manifest_path, lambda f: f.write(json.dumps(manifest, indent=1)), mode="w")
    return data_path


def load_or_build(name: str, build: Callable[[], np.ndarray], directory: Path | None = None,
                  note: str = "") -> np.ndarray:
    """The cached array ``name``, building and storing it first when missing or corrupt.

    ``note`` (what is built, how long it takes) is printed to stderr before a build.
    """
    array = load_cached(name, directory)
    if array is None:
        if note:
            print(f"betavae: {note}; cached in {directory or cache_dir()}", file=sys.stderr, flush=True)
        array = build()
        try:
            store_cached(name, array, directory)
        except OSError as exc:
            print(
                f"betavae: could not write cache entry {name} in {directory or cache_dir()} ({exc}); "
                "continuing without a cache. Set BETAVAE_CACHE to a writable directory to keep it.",
                file=sys.stderr,
            )
    return array
