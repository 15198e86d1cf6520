"""Loaders of standard files on small files in the published layouts, and every bad-file case."""

import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

import betavae.data.cars3d as cars3d
import betavae.data.mpi3d as mpi3d
import betavae.data.shapes3d as shapes3d
import betavae.data.smallnorb as smallnorb
from betavae.data import GridDataset, LabelledDataset, load_dataset
from betavae.data.base import grid_strides
from betavae.errors import DataError


def _grid(sizes):
    n = int(np.prod(sizes))
    return (np.arange(n)[:, None] // grid_strides(sizes)) % np.asarray(sizes)


def _coded_images(n, hwc=(64, 64, 3)):
    """Image i has pixel values that encode i, so a wrong order or index shows."""
    images = np.zeros((n, *hwc), np.uint8)
    images[:, :, :, 0] = (np.arange(n) % 251)[:, None, None]
    images[:, :, :, -1] = (np.arange(n) // 251)[:, None, None]
    images[:, 0, 0, :] = 255
    return images


# ---------------------------------------------------------------- 3D Shapes

SMALL_3DSHAPES = (2, 2, 2, 2, 2, 3)


def _shapes3d_labels(sizes):
    values = [np.arange(sizes[0]) / sizes[0], np.arange(sizes[1]) / sizes[1], np.arange(sizes[2]) / sizes[2],
              np.linspace(0.75, 1.25, sizes[3]), np.arange(sizes[4], dtype=float), np.linspace(-30, 30, sizes[5])]
    classes = _grid(sizes)
    return np.stack([values[k][classes[:, k]] for k in range(6)], axis=1)


def _write_h5(path, images, labels, **extra):
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(4, 64, 64, 3), compression="gzip")
        if labels is not None:
            f.create_dataset("labels", data=labels)
        for key, value in extra.items():
            f.create_dataset(key, data=value)


@pytest.fixture
def small_shapes3d(monkeypatch):
    monkeypatch.setattr(shapes3d, "FACTOR_SIZES", SMALL_3DSHAPES)
    return int(np.prod(SMALL_3DSHAPES))


def test_3dshapes_full_grid(tmp_path, small_shapes3d):
    n = small_shapes3d
    path = tmp_path / "3dshapes.h5"
    images = _coded_images(n)
    _write_h5(path, images, _shapes3d_labels(SMALL_3DSHAPES))
    dataset = load_dataset(path=path)
    assert isinstance(dataset, GridDataset) and dataset.name == "3dshapes"
    assert dataset.factor_names == shapes3d.FACTOR_NAMES and dataset.factor_sizes == SMALL_3DSHAPES
    assert np.allclose(dataset.factor_values[3], [0.75, 1.25])  # values come from the file's labels
    assert dataset.image_shape == (3, 64, 64) and len(dataset) == n
    indices = np.array([7, 0, 95, 7])
    assert np.array_equal(dataset.images(indices), images[indices].transpose(0, 3, 1, 2) / np.float32(255))
    assert np.array_equal(dataset.factors_to_index(dataset.index_to_factors(np.arange(n))), np.arange(n))
    store = dataset.training_store("cpu")
    assert store.channels_last and store.nbytes == n * 64 * 64 * 3
    assert torch.equal(store.batch(torch.from_numpy(indices)), torch.from_numpy(dataset.images(indices)))


def test_3dshapes_subset_needs_allow_subset(tmp_path, small_shapes3d):
    path = tmp_path / "3dshapes.h5"
    labels = _shapes3d_labels(SMALL_3DSHAPES)
    keep = np.arange(40)
    _write_h5(path, _coded_images(small_shapes3d)[keep], labels[keep])
    with pytest.raises(DataError, match="holds 40 images; 3D Shapes has 96.*--allow-subset"):
        load_dataset(path=path)
    dataset = load_dataset(path=path, allow_subset=True)
    assert isinstance(dataset, LabelledDataset) and not dataset.is_full_grid and len(dataset) == 40
    assert np.allclose(np.array([v[c] for v, c in zip(dataset.factor_values, dataset.factors[5])]), labels[keep[5]])
    assert np.array_equal(dataset.factors_to_index(dataset.factors[[3, 9]]), [3, 9])


@pytest.mark.parametrize("case,message", [
    ("no labels", r"datasets \['labels'\] are missing"),
    ("float images", "'images' has dtype float32, expected uint8"),
    ("wrong size", r"'images' has shape \(96, 32, 32, 3\)"),
    ("label columns", r"'labels' has shape \(96, 5\), expected \(96, 6\)"),
    ("shuffled", "not in the published grid order"),
    ("too few values", "distinct values per factor"),
    ("nan labels", "NaN or infinite"),
    ("too many", "holds 97 images"),
    ("truncated", "could not be read as an HDF5 file"),
])
def test_3dshapes_bad_files_are_named(case, message, tmp_path, small_shapes3d):
    n = small_shapes3d
    path = tmp_path / "3dshapes.h5"
    images, labels = _coded_images(n), _shapes3d_labels(SMALL_3DSHAPES)
    if case == "no labels":
        _write_h5(path, images, None)
    elif case == "float images":
        with h5py.File(path, "w") as f:
            f["images"], f["labels"] = images.astype(np.float32), labels
    elif case == "wrong size":
        with h5py.File(path, "w") as f:
            f["images"], f["labels"] = np.zeros((n, 32, 32, 3), np.uint8), labels
    elif case == "label columns":
        _write_h5(path, images, labels[:, :5])
    elif case == "shuffled":
        _write_h5(path, images, labels[np.random.default_rng(0).permutation(n)])
    elif case == "too few values":
        labels[:, 0] = 0.0
        _write_h5(path, images, labels)
    elif case == "nan labels":
        labels[3, 2] = np.nan
        _write_h5(path, images, labels)
    elif case == "too many":
        _write_h5(path, _coded_images(n + 1), np.concatenate([labels, labels[:1]]))
    elif case == "truncated":
        _write_h5(path, images, labels)
        path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match=message) as error:
        load_dataset(path=path, allow_subset=case == "too many")
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- MPI3D

SMALL_MPI3D = (2, 2, 1, 1, 1, 2, 3)


@pytest.fixture
def small_mpi3d(monkeypatch):
    monkeypatch.setattr(mpi3d, "FACTOR_SIZES", SMALL_MPI3D)
    monkeypatch.setattr(mpi3d, "FIRST_RELEASE_FACTOR_SIZES", (1, 1, 1, 1, 1, 2, 3))
    return int(np.prod(SMALL_MPI3D))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_mpi3d_is_memory_mapped(save, tmp_path, small_mpi3d, capsys):
    n = small_mpi3d
    path = tmp_path / "mpi3d_real.npz"
    images = _coded_images(n)
    save(path, images=images)
    dataset = load_dataset(path=path)
    assert isinstance(dataset, GridDataset) and dataset.name == "mpi3d_real"
    assert isinstance(dataset.source.array, np.memmap)  # read by index, never loaded whole
    if save is np.savez_compressed:
        assert "decompressing 'images' once" in capsys.readouterr().err
        assert load_dataset(path=path).source.array.filename == dataset.source.array.filename  # extracted once
    else:
        assert Path(dataset.source.array.filename) == path.resolve()  # mapped inside the .npz itself
    assert dataset.factor_sizes == SMALL_MPI3D and dataset.factor_names[-1] == "vertical_axis"
    indices = np.array([23, 0, 11])
    assert np.array_equal(dataset.images(indices), images[indices].transpose(0, 3, 1, 2) / np.float32(255))
    assert np.array_equal(dataset.index_to_factors(np.array([1, 3])), [[0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1, 0]])
    assert np.array_equal(dataset.factors_to_index(dataset.index_to_factors(np.arange(n))), np.arange(n))
    store = dataset.training_store("cpu")
    assert torch.equal(store.batch(torch.from_numpy(indices)), torch.from_numpy(dataset.images(indices)))


def test_mpi3d_first_release_and_subsets(tmp_path, small_mpi3d):
    path = tmp_path / "mpi3d_toy.npz"
    np.savez(path, images=_coded_images(6))
    assert load_dataset(path=path).factor_sizes == (1, 1, 1, 1, 1, 2, 3)  # the 460,800-image release, small
    np.savez(path, images=_coded_images(10))
    with pytest.raises(DataError, match="holds 10 images; MPI3D has 24.*--allow-subset"):
        load_dataset(path=path)
    subset = load_dataset(path=path, allow_subset=True)
    assert isinstance(subset, LabelledDataset) and subset.factor_sizes == SMALL_MPI3D
    assert np.array_equal(subset.factors, _grid(SMALL_MPI3D)[:10])  # the first images of the grid order


@pytest.mark.parametrize("case,message", [
    ("no images", r"has no array 'images' \(it has \['imgs'\]\)"),
    ("dtype", "dtype float32, expected uint8"),
    ("shape", r"shape \(24, 64, 64\), expected"),
    ("truncated", "truncated|could not be read as a .npz"),
    ("pickled", "pickled Python objects"),
])
def test_mpi3d_bad_files_are_named(case, message, tmp_path, small_mpi3d):
    path = tmp_path / "mpi3d_realistic.npz"
    n = small_mpi3d
    if case == "no images":
        np.savez(path, imgs=_coded_images(n))
    elif case == "dtype":
        np.savez(path, images=_coded_images(n).astype(np.float32))
    elif case == "shape":
        np.savez(path, images=np.zeros((n, 64, 64), np.uint8))
    elif case == "truncated":
        np.savez(path, images=_coded_images(n))
        path.write_bytes(path.read_bytes()[:200000])
    elif case == "pickled":
        np.savez(path, images=np.array([{"a": 1}] * n, dtype=object))
    with pytest.raises(DataError, match=message):
        load_dataset(path=path)


# ---------------------------------------------------------------- SmallNORB

SMALL_NORB = (2, 2, 2, 3, 2)  # category, instance, elevation, azimuth, lighting
_CHUNKS = {"training": "5x46789x9x18x6x2x96x96", "testing": "5x01235x9x18x6x2x96x96"}


def _write_matrix(path, array, magic, gz=False):
    header = np.array([magic, array.ndim, *array.shape, *([1] * max(0, 3 - array.ndim))], "<i4").tobytes()
    data = header + np.ascontiguousarray(array).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _write_norb_split(directory, split, instance, gz=False, shuffle=True):
    """One split holding one instance per category; left image constant 10 + grid position, right 250."""
    full = _grid(SMALL_NORB)
    rows = full[full[:, 1] == instance]
    if shuffle:
        rows = rows[np.random.default_rng(instance).permutation(len(rows))]
    index = rows @ grid_strides(SMALL_NORB)
    pairs = np.zeros((len(rows), 2, 96, 96), np.uint8)
    pairs[:, 0] = (10 + index)[:, None, None]
    pairs[:, 1] = 250
    info = np.column_stack([rows[:, 1], rows[:, 2], rows[:, 3] * 2, rows[:, 4]]).astype("<i4")
    stem = directory / f"smallnorb-{_CHUNKS[split]}-{split}"
    suffix = ".mat.gz" if gz else ".mat"
    _write_matrix(stem.with_name(stem.name + f"-dat{suffix}"), pairs, smallnorb.MAGIC_UINT8, gz)
    _write_matrix(stem.with_name(stem.name + f"-cat{suffix}"), rows[:, 0].astype("<i4"), smallnorb.MAGIC_INT32, gz)
    _write_matrix(stem.with_name(stem.name + f"-info{suffix}"), info, smallnorb.MAGIC_INT32, gz)
    return stem


@pytest.fixture
def small_norb(monkeypatch):
    monkeypatch.setattr(smallnorb, "FACTOR_SIZES", SMALL_NORB)


@pytest.mark.parametrize("gz", [False, True])
def test_smallnorb_both_splits_make_the_grid(gz, tmp_path, small_norb):
    _write_norb_split(tmp_path, "training", instance=1, gz=gz)
    _write_norb_split(tmp_path, "testing", instance=0, gz=gz)
    dataset = load_dataset(path=tmp_path, image_size=32)
    assert isinstance(dataset, GridDataset) and dataset.name == "smallnorb"
    assert dataset.factor_names == ("category", "instance", "elevation", "azimuth", "lighting")
    assert dataset.image_shape == (1, 32, 32) and len(dataset) == 48
    images = dataset.images(np.arange(48))
    assert np.allclose(images[:, 0, 10, 10] * 255, 10 + np.arange(48), atol=0.5)  # left image, grid order
    assert np.allclose(dataset.factor_values[3], [0, 20, 40])  # azimuth 0, 2, 4 -> degrees
    assert np.array_equal(dataset.factors_to_index(dataset.index_to_factors(np.arange(48))), np.arange(48))
    # pointing at one of the files reads the whole folder
    assert len(load_dataset(path=next(tmp_path.glob("*testing-cat*")))) == 48


def test_smallnorb_one_split_is_a_subset(tmp_path, small_norb):
    _write_norb_split(tmp_path, "training", instance=1)
    with pytest.raises(DataError, match="holds 24 SmallNORB images.*--allow-subset"):
        load_dataset(path=tmp_path)
    dataset = load_dataset(path=tmp_path, allow_subset=True)
    assert isinstance(dataset, LabelledDataset) and dataset.factor_sizes == SMALL_NORB
    assert np.all(dataset.factors[:, 1] == 1)
    assert np.array_equal(dataset.factors_to_index(dataset.index_to_factors(np.arange(24))), np.arange(24))
    images = dataset.images(np.arange(24))[:, 0, 5, 5] * 255
    assert np.allclose(images, 10 + dataset.factors @ grid_strides(SMALL_NORB), atol=0.5)


@pytest.mark.parametrize("case,message", [
    ("magic", "magic number 0x1e3d4c54 is not the uint8 matrix"),
    ("truncated", "truncated"),
    ("missing info", "lacks its info file"),
    ("counts", "disagree on the number of images"),
    ("odd azimuth", "azimuths must be even"),
    ("stereo shape", r"expected \(N, 2, 96, 96\)"),
])
def test_smallnorb_bad_files_are_named(case, message, tmp_path, small_norb):
    stem = _write_norb_split(tmp_path, "training", instance=1)
    dat, cat, info = (stem.with_name(stem.name + f"-{k}.mat") for k in ("dat", "cat", "info"))
    if case == "magic":
        raw = bytearray(dat.read_bytes())
        raw[:4] = np.array([smallnorb.MAGIC_INT32], "<i4").tobytes()
        dat.write_bytes(bytes(raw))
    elif case == "truncated":
        dat.write_bytes(dat.read_bytes()[:-100])
    elif case == "missing info":
        info.unlink()
    elif case == "counts":
        _write_matrix(cat, np.zeros(23, "<i4"), smallnorb.MAGIC_INT32)
    elif case == "odd azimuth":
        _write_matrix(info, np.ones((24, 4), "<i4"), smallnorb.MAGIC_INT32)
    elif case == "stereo shape":
        _write_matrix(dat, np.zeros((24, 1, 96, 96), np.uint8), smallnorb.MAGIC_UINT8)
    with pytest.raises(DataError, match=message) as error:
        load_dataset(path=tmp_path, allow_subset=True)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- Cars3D


def _write_car(path, car):
    mesh = np.zeros(cars3d.MESH_SHAPE, np.uint8)  # (H, W, RGB, azimuth, elevation)
    azimuth, elevation = np.meshgrid(np.arange(24), np.arange(4), indexing="ij")
    mesh[:, :, 0] = (elevation * 24 + azimuth + 100 * car)[None, None]
    mesh[:, :, 1] = 7
    scipy.io.savemat(path, {"im": mesh})


def test_cars3d_folder_is_a_grid(tmp_path, monkeypatch):
    for car in range(2):
        _write_car(tmp_path / f"car_{car:03d}_mesh.mat", car)
    with pytest.raises(DataError, match="holds 2 .mat files; Cars3D has 183.*--allow-subset"):
        load_dataset(path=tmp_path)
    dataset = load_dataset(path=tmp_path, allow_subset=True)
    assert isinstance(dataset, GridDataset) and dataset.factor_sizes == (4, 24, 2)
    assert dataset.factor_names == ("elevation", "azimuth", "object")
    assert list(dataset.factor_values[2]) == ["car_000_mesh", "car_001_mesh"]
    factors = dataset.sample_factors(20, np.random.default_rng(0))
    red = dataset.images_from_factors(factors)[:, 0, 32, 32] * 255
    assert np.allclose(red, factors[:, 0] * 24 + factors[:, 1] + 100 * factors[:, 2], atol=0.5)
    assert dataset.image_shape == (3, 64, 64)
    assert np.array_equal(dataset.factors_to_index(dataset.index_to_factors(np.arange(192))), np.arange(192))
    assert load_dataset(path=tmp_path, allow_subset=True, image_size=128).image_shape == (3, 128, 128)
    monkeypatch.setattr(cars3d, "NUM_CARS", 2)
    assert len(load_dataset(path=tmp_path)) == 4 * 24 * 2


def test_cars3d_bad_files_are_named_together(tmp_path):
    _write_car(tmp_path / "car_000_mesh.mat", 0)
    (tmp_path / "car_001_mesh.mat").write_bytes(b"not a matlab file at all")
    scipy.io.savemat(tmp_path / "car_002_mesh.mat", {"im": np.zeros((64, 64, 3, 24, 4), np.uint8)})
    with pytest.raises(DataError, match=r"2 Cars3D file\(s\).*car_001_mesh.mat \(.*car_002_mesh.mat \('im' is \(64, 64, 3, 24, 4\)"):
        load_dataset(path=tmp_path, allow_subset=True)
    with pytest.raises(DataError, match="point --data at the folder"):
        load_dataset(path=tmp_path / "car_000_mesh.mat")
