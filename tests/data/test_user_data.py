"""The user's own data: image folders, arrays, factor labels, and the config/CLI path to them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from betavae.cli import main
from betavae.data import ArrayDataset, LabelledDataset, dataset_from_config, load_dataset
from betavae.data.folders import fit_square, list_image_files
from betavae.errors import ConfigError, DataError
from betavae.training.config import TrainConfig


def _save(path, array, mode=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **kwargs)


@pytest.fixture
def mixed_folder(tmp_path):
    """Six images: RGB/grey/palette/RGBA, PNG/JPEG, sizes from 40 to 120 pixels, nested folders."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    _save(root / "a.png", rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    _save(root / "sub" / "b.JPG", rng.integers(0, 256, (100, 40), dtype=np.uint8), quality=95)
    _save(root / "sub" / "deeper" / "c.jpeg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    rgba = rng.integers(0, 256, (50, 50, 4), dtype=np.uint8)
    _save(root / "d.png", rgba)
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).convert("P").save(root / "e.png")
    _save(root / "f.png", np.full((33, 47), 200, np.uint8))
    (root / "notes.txt").write_text("not an image")
    _save(root / ".hidden" / "g.png", np.zeros((8, 8), np.uint8))
    (root / "._a.png").write_bytes(b"resource fork")
    return root


def test_folder_listing_is_sorted_nested_and_skips_hidden(mixed_folder):
    assert list_image_files(mixed_folder) == ["a.png", "d.png", "e.png", "f.png", "sub/b.JPG", "sub/deeper/c.jpeg"]


@pytest.mark.parametrize("size", [32, 64, 128])
def test_folder_of_mixed_images_becomes_one_rgb_array(mixed_folder, size):
    dataset = load_dataset(path=mixed_folder, image_size=size)
    assert isinstance(dataset, ArrayDataset) and dataset.image_shape == (3, size, size) and len(dataset) == 6
    assert dataset.paths[4] == "sub/b.JPG"
    images = dataset.images(np.arange(6))
    grey = images[dataset.paths.index("f.png")]
    assert np.allclose(grey, 200 / 255, atol=1 / 255)  # grey repeated into three channels
    jpeg = images[4]
    assert np.array_equal(jpeg[0], jpeg[1]) and np.array_equal(jpeg[1], jpeg[2])
    store = dataset.training_store("cpu")
    assert store.data.dtype == torch.uint8 and store.nbytes == 6 * 3 * size * size
    assert np.allclose(store.batch(torch.arange(6)).numpy(), images)


def test_transparency_is_composited_onto_black(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 32:, 3] = 255  # right half opaque, left half transparent
    _save(tmp_path / "x.png", rgba)
    image = load_dataset(path=tmp_path).images(np.array([0]))[0]
    assert np.all(image[:, :, :32] == 0) and np.allclose(image[:, :, 32:], 200 / 255)


def test_all_grey_folder_has_one_channel(tmp_path):
    _save(tmp_path / "x.png", np.full((70, 50), 10, np.uint8))
    rgb_but_grey = np.repeat(np.arange(64, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    _save(tmp_path / "y.jpg", rgb_but_grey, quality=100, subsampling=0)
    _save(tmp_path / "z.png", rgb_but_grey)
    Image.fromarray(np.full((64, 64), 32768, np.uint16)).save(tmp_path / "w16.png")  # 16-bit grey
    dataset = load_dataset(path=tmp_path)
    assert dataset.image_shape == (1, 64, 64) and len(dataset) == 4
    assert np.allclose(dataset.images(np.array([0]))[0], 128 / 255)  # 16 bits scaled to 8


def test_resize_rule_scales_the_shorter_side_and_crops_the_centre():
    wide = np.zeros((50, 100), np.uint8)
    wide[:, 20:80] = 255  # the centre of the image is white, the sides black
    out = np.asarray(fit_square(Image.fromarray(wide), 32))
    assert out.shape == (32, 32)
    assert out.min() > 240  # the black sides were cropped away (Lanczos rings by a few levels)
    tall = np.zeros((90, 30), np.uint8)
    tall[25:65] = 255
    out = np.asarray(fit_square(Image.fromarray(tall), 64))  # upscaled: 30 -> 64, then 192 rows cropped to 64
    assert out.shape == (64, 64) and out.min() > 240  # Lanczos rings by a few levels; no black is left


def test_bad_images_are_listed_in_one_error_or_skipped_with_a_count(mixed_folder, capsys):
    good = mixed_folder / "a.png"
    (mixed_folder / "truncated.png").write_bytes(good.read_bytes()[:200])
    (mixed_folder / "text.jpg").write_text("this is not a JPEG")
    (mixed_folder / "sub" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as error:
        load_dataset(path=mixed_folder)
    message = str(error.value)
    assert message.startswith(f"3 of 9 images in {mixed_folder} could not be read")
    for name in ("truncated.png", "text.jpg", "sub/empty.png"):
        assert name in message
    assert "--skip-bad" in message and "\n" not in message
    dataset = load_dataset(path=mixed_folder, skip_bad=True)
    assert len(dataset) == 6 and "truncated.png" not in dataset.paths
    err = capsys.readouterr().err
    assert "skipped 3 of 9 images" in err and "text.jpg" in err


def test_folder_errors(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no PNG or JPEG images found"):
        load_dataset(path=tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="none of the 1 images"):
        load_dataset(path=tmp_path, skip_bad=True)
    with pytest.raises(DataError, match="image size 48 is not supported"):
        load_dataset(path=tmp_path, image_size=48)


def _labelled_folder(root, n=8):
    rows = ["path,colour,size"]
    for i in range(n):
        _save(root / f"img{i}.png", np.full((40, 40, 3), (30 * i, 10, 200), np.uint8))
        rows.append(f"img{i}.png,{['red', 'blue'][i % 2]},{[1.5, 3][i // 4]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_folder_with_csv_labels(tmp_path):
    csv = _labelled_folder(tmp_path / "data")
    dataset = load_dataset(path=tmp_path / "data", factors=csv)
    assert isinstance(dataset, LabelledDataset) and dataset.factor_names == ("colour", "size")
    assert dataset.factor_sizes == (2, 2) and list(dataset.factor_values[0]) == ["blue", "red"]
    assert np.allclose(dataset.factor_values[1], [1.5, 3.0])
    position = dataset.source.paths.index("img5.png")
    assert dataset.factors[position].tolist() == [0, 1]  # blue (odd), size 3 (i >= 4)
    assert not dataset.is_full_grid  # 2 images per combination


@pytest.mark.parametrize("edit,message", [
    (lambda text: text.replace("img3.png,", "missing.png,"), "labels 1 image\\(s\\) that are not in the data folder: missing.png"),
    (lambda text: "\n".join(text.splitlines()[:-2]) + "\n", "no labels for 2 image\\(s\\): img6.png, img7.png"),
    (lambda text: text + "img0.png,red,3\n", "img0.png has more than one row"),
    (lambda text: text.replace("path,", "name,"), "needs a column named path"),
    (lambda text: text.replace("img2.png,red,1.5", "img2.png,,1.5"), "line 4: no value for colour"),
    (lambda text: text.replace("img2.png,red,1.5", "img2.png,red"), "line 4: 2 cells"),
    (lambda text: text.replace("img2.png,red,1.5", "img2.png,red,nan"), "NaN or infinite"),
])
def test_bad_label_files_are_named(tmp_path, edit, message):
    csv = _labelled_folder(tmp_path / "data")
    csv.write_text(edit(csv.read_text()))
    with pytest.raises(DataError, match=message):
        load_dataset(path=tmp_path / "data", factors=csv)


def test_labels_of_skipped_images_are_dropped(tmp_path, capsys):
    csv = _labelled_folder(tmp_path / "data")
    (tmp_path / "data" / "img7.png").write_bytes(b"corrupt")
    dataset = load_dataset(path=tmp_path / "data", factors=csv, skip_bad=True)
    assert len(dataset) == 7 and len(dataset.factors) == 7
    assert "skipped 1 of 8" in capsys.readouterr().err


def test_array_files_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 48, 48, 3), dtype=np.uint8)
    labels = np.column_stack([np.arange(12) % 3, np.arange(12) // 3 * 0.5])
    np.savez(tmp_path / "data.npz", images=images, factors=labels, factor_names=np.array(["digit", "angle"]))
    dataset = load_dataset(path=tmp_path / "data.npz", image_size=32)
    assert isinstance(dataset, LabelledDataset) and dataset.image_shape == (3, 32, 32)
    assert dataset.factor_names == ("digit", "angle") and dataset.factor_sizes == (3, 4)
    assert dataset.is_full_grid
    assert np.array_equal(dataset.factors_to_index(dataset.factors), np.arange(12))
    grey = rng.integers(0, 256, (6, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    (tmp_path / "grey.csv").write_text("kind\n" + "\n".join("ab"[i % 2] for i in range(6)) + "\n")
    dataset = load_dataset(path=tmp_path / "grey.npy", factors=tmp_path / "grey.csv")
    assert dataset.image_shape == (1, 32, 32) and dataset.factors[:, 0].tolist() == [0, 1, 0, 1, 0, 1]
    (tmp_path / "grey.csv").write_text("kind\na\nb\n")
    with pytest.raises(DataError, match="has 2 label rows but .* holds 6 images"):
        load_dataset(path=tmp_path / "grey.npy", factors=tmp_path / "grey.csv")
    with pytest.raises(DataError, match="holds a 'factors' array and --factors was given"):
        load_dataset(path=tmp_path / "data.npz", factors=tmp_path / "grey.csv")
    np.savez(tmp_path / "bad.npz", images=images, factors=labels[:, :1].T)
    with pytest.raises(DataError, match="label rows|shape"):
        load_dataset(path=tmp_path / "bad.npz")


def test_labelled_dataset_lookups_cover_repeated_and_missing_combinations():
    source = ArrayDataset(np.zeros((6, 1, 32, 32), np.uint8))
    factors = np.array([[0, 0], [0, 0], [0, 1], [1, 0], [1, 0], [1, 0]])
    dataset = LabelledDataset(source, factors, ["a", "b"], [np.arange(2), np.arange(2)])
    rng = np.random.default_rng(0)
    picks = dataset.factors_to_index(np.array([[1, 0]] * 300), rng)
    assert set(picks.tolist()) == {3, 4, 5}  # uniformly among the images sharing the factors
    assert np.all(np.bincount(picks, minlength=6)[3:] > 70)
    assert dataset.factors_to_index(np.array([[1, 0]])).tolist() == [3]  # without rng: the first
    with pytest.raises(DataError, match=r"no image has the factors \(a=1, b=1\)"):
        dataset.factors_to_index(np.array([[0, 1], [1, 1]]))
    fixed = dataset.sample_factors_fixing(1, np.array([1, 1, 0]), rng)
    assert fixed[:2].tolist() == [[0, 1], [0, 1]] and fixed[2, 1] == 0
    sampled = dataset.sample_factors(6000, rng)
    share = np.mean(np.all(sampled == [1, 0], axis=1))
    assert abs(share - 0.5) < 0.03  # the data's own distribution: 3 of 6 images
    with pytest.raises(DataError, match="no image has a = 2"):
        dataset.sample_factors_fixing(0, np.array([2]), rng)


def test_config_routes_the_data_fields(tmp_path, mixed_folder):
    config = TrainConfig(data=str(mixed_folder), image_size=32, skip_bad=True).validate()
    assert dataset_from_config(config).image_shape == (3, 32, 32)
    for values, message in [
        ({"data": str(mixed_folder), "image_size": 48}, "image_size must be one of 32, 64, 128"),
        ({"factors": "labels.csv"}, "--factors labels your own --data"),
        ({"data": str(mixed_folder), "factors": "labels.txt"}, "must be a .csv file"),
        ({"allow_subset": True}, "--allow-subset applies only to --data"),
        ({"skip_bad": True}, "--skip-bad applies only to --data"),
        ({"data": str(mixed_folder), "dataset": "color-dsprites"}, "both name the training data; drop one"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**values).validate()


def test_train_end_to_end_on_a_labelled_folder(tmp_path, capsys):
    csv = _labelled_folder(tmp_path / "data", n=8)
    _save(tmp_path / "data" / "extra" / "grey.jpg", np.full((30, 70), 90, np.uint8))
    with open(csv, "a") as f:
        f.write("extra/grey.jpg,red,3\n")
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "data"), "--factors", str(csv), "--image-size", "32",
                 "--steps", "3", "--batch-size", "4", "--latents", "2", "--log-every", "1", "--out", str(out),
                 "--no-figures"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 32 and config["factors"] == str(csv)
    assert "9 images (3, 32, 32)" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [(b"(2, 4, 4)", b"(2, 4, 4,"), (b"}", b"}}"), (b"'descr'", b"'descr' 'x'")])
def test_a_damaged_npy_header_is_a_data_error_naming_the_file(tmp_path, damage):
    import io

    from betavae.data.arrays import load_array_file, memmap_npy

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 4, 4), np.float32))
    path = tmp_path / "images.npy"
    path.write_bytes(buffer.getvalue().replace(*damage, 1))  # numpy's own header parser fails on each
    for read in (load_array_file, memmap_npy, lambda p: load_dataset(path=p)):
        with pytest.raises(DataError, match="images.npy.*(truncated or corrupt)"):
            read(path)


def test_a_file_that_is_no_npy_array_is_named_so_and_a_pickled_one_as_pickled(tmp_path):
    from betavae.data.arrays import load_array_file

    text = tmp_path / "x.npy"
    text.write_text("these are not images\n")
    for read in (load_array_file, lambda p: load_dataset(path=p)):
        with pytest.raises(DataError, match=r"x.npy is not a .npy array file \(it does not begin as np.save"):
            read(text)
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="objects.npy holds pickled Python objects"):
        load_array_file(pickled)
