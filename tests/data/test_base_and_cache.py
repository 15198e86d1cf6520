import json

import numpy as np
import pytest
import torch

from betavae.data import ArrayDataset, ImageStore, load_dataset
from betavae.data.base import pack_binary, unpack_binary_torch
from betavae.data.cache import load_cached, load_or_build, store_cached
from betavae.errors import DataError


def test_bit_packing_round_trip():
    rng = np.random.default_rng(0)
    images = (rng.random((10, 1, 5, 7)) > 0.5).astype(np.uint8)  # 35 pixels: not a multiple of 8
    packed = pack_binary(images)
    assert packed.shape == (10, 5)
    assert np.array_equal(unpack_binary_torch(torch.from_numpy(packed), 35).numpy().reshape(images.shape), images)


def test_image_store_batches_by_index(small_images):
    store = ImageStore.from_array(small_images[:, None], binary=True, device="cpu")
    assert store.nbytes == len(small_images) * 64 * 64 // 8
    idx = torch.tensor([5, 0, 5])
    batch = store.batch(idx)
    assert batch.shape == (3, 1, 64, 64) and batch.dtype == torch.float32
    assert np.array_equal(batch.numpy()[:, 0], small_images[[5, 0, 5]])
    grey = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    store = ImageStore.from_array(grey, binary=False, device="cpu")
    assert np.allclose(store.batch(torch.arange(4)).numpy(), grey, atol=1 / 255)


def test_array_dataset_layouts_and_errors():
    nhwc = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    ds = ArrayDataset(nhwc)
    assert ds.image_shape == (3, 32, 32) and not ds.binary and len(ds) == 6
    assert np.allclose(ds[1], nhwc[1].transpose(2, 0, 1) / 255.0)
    assert ArrayDataset(np.ones((2, 32, 32), np.float32)).binary
    with pytest.raises(DataError, match="lie in \\[0, 1\\]"):
        ArrayDataset(np.full((2, 32, 32), 2.0))
    with pytest.raises(DataError, match="1 or 3"):
        ArrayDataset(np.zeros((2, 5, 32, 32)))
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("celeba")


def test_cache_round_trip_and_corruption_is_rebuilt(tmp_path, capsys):
    array = np.arange(1000, dtype=np.uint8)
    store_cached("entry", array, tmp_path)
    assert np.array_equal(load_cached("entry", tmp_path), array)
    data = tmp_path / "entry.npy"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # flip bits: same size, wrong checksum
    data.write_bytes(bytes(raw))
    assert load_cached("entry", tmp_path) is None
    assert "checksum" in capsys.readouterr().err
    data.write_bytes(bytes(raw[:-10]))  # partial write
    assert load_cached("entry", tmp_path) is None
    assert "size" in capsys.readouterr().err
    built = []
    result = load_or_build("entry", lambda: built.append(1) or array, tmp_path)
    assert built == [1] and np.array_equal(result, array)
    assert np.array_equal(load_cached("entry", tmp_path), array)  # rebuilt entry is intact again
    (tmp_path / "entry.json").unlink()  # data without manifest is never trusted
    assert load_cached("entry", tmp_path) is None
    manifest = {"shape": [3], "dtype": "uint8", "file_bytes": 1, "sha256": "0"}
    (tmp_path / "entry.json").write_text(json.dumps(manifest))
    assert load_cached("entry", tmp_path) is None
