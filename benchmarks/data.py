"""Data speed: rendering time of each procedural dataset and batch throughput of each storage mode.

Prints, for the machine it runs on:

1. **Rendering**: seconds to render images on the host with ``dataset.images(indices)`` (the path
   metrics and figures use), per procedural dataset, and the one-off builds (colored-shapes masks,
   the procedural Scream texture).
2. **Batch sampling** (images/s): ``store.batch(indices)`` for random indices on the training
   device, per storage mode: bit-packed (dSprites), uint8 NCHW in memory (folders, arrays,
   SmallNORB, Cars3D), uint8 NHWC memory-mapped inside a ``.npz`` (MPI3D), uint8 NHWC in memory
   (3D Shapes, MPI3D on an accelerator), and procedural (masks bit-packed, painted per batch).
   Packed masks are random bits here: the content does not change the cost, and the real dSprites
   grid would take a minute to render first.
3. **Bounded memory**: the resident memory added by reading random images from a memory-mapped
   MPI3D-layout ``.npz`` larger than the images read.

    python benchmarks/data.py [--device cpu] [--batch-size 64] [--seconds 2] [--mapped-images 60000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from betavae.data import ArrayDataset, ColoredShapes, ColorDSprites, DSprites, NoisyDSprites, ScreamDSprites
from betavae.data.arrays import MappedImages, npz_member_array
from betavae.data.base import ImageStore
from betavae.data.colored_shapes import _render_geometry_packed
from betavae.data.dsprites import render
from betavae.data.variants import scream_texture


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def throughput(store: ImageStore, batch_size: int, seconds: float, device: torch.device) -> float:
    """Images/s of ``store.batch`` on random index batches drawn on ``device``, for about ``seconds``."""
    generator = torch.Generator(device).manual_seed(0)

    def draw() -> torch.Tensor:
        indices = torch.randint(len(store), (batch_size,), device=device, generator=generator)
        return store.batch(indices)

    for _ in range(3):
        draw()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        draw()
        count += 1
    sync()
    return count * batch_size / (time.perf_counter() - start)


def write_mpi3d_layout(path: Path, n: int) -> None:
    """An uncompressed ``.npz`` with ``images`` ``(n, 64, 64, 3)`` uint8, written in chunks (bounded memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (n, 64, 64, 3)}
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, header)
            for start in range(0, n, 4096):
                f.write(rng.integers(0, 256, (min(4096, n - start), 64, 64, 3), dtype=np.uint8).tobytes())


def resident_mb() -> dict[str, float]:
    """Resident memory of this process, MB (Linux): ``anon`` (private, what bounded memory is about)
    and ``file`` (file pages mapped in, which the OS reclaims under pressure)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                name, kb, _ = line.split()
                fields[name[3:-1].lower()] = int(kb) / 1e3
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per throughput measurement")
    parser.add_argument("--render-images", type=int, default=4096)
    parser.add_argument("--mapped-images", type=int, default=60000, help="images in the memory-mapped test file")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}, batch {args.batch_size}")

    print(f"\n1. Rendering on the host ({args.render_images} random images, best of 2)")
    rng = np.random.default_rng(0)
    dsprites = DSprites()
    datasets = {"dsprites": dsprites, "color-dsprites": ColorDSprites(), "noisy-dsprites": NoisyDSprites(),
                "scream-dsprites": ScreamDSprites(), "colored-shapes": ColoredShapes()}
    print(f"   {'scream texture (once, 274x350)':<34} {timed(lambda: scream_texture.__wrapped__()):7.3f} s")
    geometry_seconds = timed(_render_geometry_packed)
    print(f"   {'colored-shapes masks (once, 32768)':<34} {geometry_seconds:7.3f} s")
    factors = dsprites.sample_factors(args.render_images, rng)
    seconds = timed(lambda: render(factors), 2)
    print(f"   {'dsprites render() (masks only)':<34} {seconds:7.3f} s  {args.render_images / seconds:10,.0f} images/s")
    for name, dataset in datasets.items():
        indices = rng.choice(len(dataset), args.render_images, replace=False)
        seconds = timed(lambda: dataset.images(indices), 2)
        print(f"   {name + ' images()':<34} {seconds:7.3f} s  {args.render_images / seconds:10,.0f} images/s")

    print(f"\n2. Batch sampling on {device} (store.batch, random indices, images/s)")
    packed = np.random.default_rng(1).integers(0, 256, (737280, 512), dtype=np.uint8)
    dsprites._packed = packed  # random bits stand in for the rendered grid (see the module docstring)
    stores = {"bit-packed (dsprites, 737,280)": dsprites.training_store(device)}
    rgb = np.random.default_rng(2).integers(0, 256, (20000, 3, 64, 64), dtype=np.uint8)
    stores["uint8 NCHW in memory (20,000 RGB)"] = ArrayDataset(rgb).training_store(device)
    stores["uint8 NHWC in memory (20,000 RGB)"] = ImageStore(torch.from_numpy(np.ascontiguousarray(
        rgb.transpose(0, 2, 3, 1))).to(device), (3, 64, 64), packed=False, channels_last=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mpi3d_toy.npz"
        write_mpi3d_layout(path, args.mapped_images)
        mapped = MappedImages(npz_member_array(path, "images"), "mpi3d-layout")
        if device.type == "cpu":
            stores[f"uint8 NHWC memory-mapped .npz ({args.mapped_images:,})"] = mapped.training_store(device)
        for name in ("color-dsprites", "noisy-dsprites", "scream-dsprites"):
            datasets[name].shapes._packed = packed
            stores[f"procedural {name}"] = datasets[name].training_store(device)
        stores["procedural colored-shapes"] = datasets["colored-shapes"].training_store(device)
        for name, store in stores.items():
            rate = throughput(store, args.batch_size, args.seconds, device)
            print(f"   {name:<44} {rate:12,.0f} images/s   store {store.nbytes / 1e6:8.1f} MB")

        print("\n3. Bounded memory: reading a memory-mapped .npz by index")
        size_mb = path.stat().st_size / 1e6
        del stores
        before = resident_mb()
        images = MappedImages(npz_member_array(path, "images"), "mapped")
        reads = 0
        for _ in range(50):
            reads += len(images.images(rng.choice(len(images), 256, replace=False)))
        after = resident_mb()
        print(f"   file {size_mb:,.0f} MB; read {reads:,} random images ({reads * 64 * 64 * 3 / 1e6:,.0f} MB as uint8) "
              f"in batches of 256; private memory grew by {after['anon'] - before['anon']:,.0f} MB, mapped file "
              f"pages by {after['file'] - before['file']:,.0f} MB (page cache, reclaimable)")


if __name__ == "__main__":
    main()
