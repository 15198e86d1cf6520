import numpy as np
import pytest

from betavae.data import DSprites, load_dataset
from betavae.data.dsprites import FACTOR_SIZES, load_original_npz, render
from betavae.errors import DataError


@pytest.fixture(scope="module")
def dsprites():
    return DSprites()


def test_factor_grid_definition(dsprites):
    assert dsprites.factor_names == ("shape", "scale", "orientation", "posX", "posY")
    assert dsprites.factor_sizes == (3, 6, 40, 32, 32)
    assert len(dsprites) == 737_280
    values = dsprites.factor_values
    assert np.allclose(values[1], np.linspace(0.5, 1, 6))
    assert values[2][0] == 0 and np.isclose(values[2][-1], 2 * np.pi)  # both ends, as published
    assert np.allclose(values[3], np.linspace(0, 1, 32)) and np.allclose(values[4], np.linspace(0, 1, 32))


def test_index_factor_round_trip_over_whole_grid(dsprites):
    indices = np.arange(len(dsprites))
    factors = dsprites.index_to_factors(indices)
    assert np.array_equal(dsprites.factors_to_index(factors), indices)
    # the published formula, posY fastest
    f = factors
    assert np.array_equal(245760 * f[:, 0] + 40960 * f[:, 1] + 1024 * f[:, 2] + 32 * f[:, 3] + f[:, 4], indices)
    assert np.array_equal(factors[1], [0, 0, 0, 0, 1]) and np.array_equal(factors[32], [0, 0, 0, 1, 0])


def test_out_of_range_factors_are_refused(dsprites):
    with pytest.raises(DataError, match="out of range"):
        dsprites.factors_to_index(np.array([[3, 0, 0, 0, 0]]))
    with pytest.raises(DataError, match="shape"):
        dsprites.factors_to_index(np.array([[0, 0, 0]]))


def test_images_are_binary_and_inside_the_frame():
    rng = np.random.default_rng(1)
    factors = DSprites().sample_factors(2000, rng)
    factors[:6, 1] = 5  # largest scale
    factors[:6, 3:] = [[0, 0], [31, 31], [0, 31], [31, 0], [0, 0], [31, 31]]
    images = render(factors)
    assert images.dtype == np.uint8 and set(np.unique(images)) <= {0, 1}
    assert images.shape == (2000, 64, 64)
    assert images.sum(axis=(1, 2)).min() > 0  # every image shows its shape
    assert images[:, 0, :].sum() == images[:, -1, :].sum() == images[:, :, 0].sum() == images[:, :, -1].sum() == 0


def _area(shape, scale, orientation=0, x=16, y=16):
    return int(render(np.array([[shape, scale, orientation, x, y]])).sum())


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_area_grows_with_scale_squared(shape):
    small, large = _area(shape, 0), _area(shape, 5)
    assert large / small == pytest.approx((1.0 / 0.5) ** 2, rel=0.12)


def test_square_area_is_rotation_invariant_up_to_pixels():
    areas = [_area(0, 5, o) for o in range(40)]
    assert max(areas) / min(areas) < 1.08


def test_centroid_moves_with_position():
    xs, ys = [], []
    for pos in (0, 10, 20, 31):
        img = render(np.array([[1, 3, 0, pos, 16]]))[0]
        xs.append(np.nonzero(img)[1].mean())
        img = render(np.array([[1, 3, 0, 16, pos]]))[0]
        ys.append(np.nonzero(img)[0].mean())
    assert np.all(np.diff(xs) > 5) and np.all(np.diff(ys) > 5)  # posX -> columns, posY -> rows
    assert xs[0] == pytest.approx(16, abs=1) and xs[-1] == pytest.approx(48, abs=1)


def test_images_differ_across_the_grid(dsprites):
    rng = np.random.default_rng(2)
    indices = rng.choice(len(dsprites), 3000, replace=False)
    flat = dsprites.images(indices).reshape(3000, -1)
    assert len(np.unique(flat, axis=0)) > 2900  # only a few symmetric rotations coincide
    for factor in range(5):  # changing any single factor changes the image (except symmetric angles)
        base = np.array([[1, 2, 5, 10, 10]])
        other = base.copy()
        other[0, factor] += 1
        assert not np.array_equal(dsprites.images_from_factors(base), dsprites.images_from_factors(other))


def test_orientation_ends_coincide():
    # linspace(0, 2π, 40) includes both ends: the first and last angles draw the same image.
    assert np.array_equal(render(np.array([[2, 5, 0, 16, 16]])), render(np.array([[2, 5, 39, 16, 16]])))


def test_packed_grid_matches_on_the_fly_rendering(monkeypatch, tmp_path):
    import betavae.data.dsprites as ds

    monkeypatch.setattr(ds, "FACTOR_SIZES", (3, 2, 4, 4, 4))
    small = ds._render_grid_packed()  # the grid builder with a small grid
    assert small.shape == (3 * 2 * 4 * 4 * 4, 512)
    sizes = np.array((3, 2, 4, 4, 4))
    strides = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]])
    factors = (np.arange(len(small))[:, None] // strides) % sizes
    assert np.array_equal(np.unpackbits(small, axis=1).reshape(-1, 64, 64), render(factors))


def _write_npz(path, n=8, **override):
    arrays = {
        "imgs": np.zeros((n, 64, 64), np.uint8),
        "latents_classes": np.zeros((n, 6), np.int64),
        "latents_values": np.zeros((n, 6), np.float64),
    }
    arrays.update(override)
    np.savez(path, **arrays)


def test_original_npz_is_validated(tmp_path):
    path = tmp_path / "dsprites.npz"
    _write_npz(path)
    with pytest.raises(DataError, match="'imgs' has shape"):
        load_original_npz(path)
    _write_npz(path, imgs=None)
    np.savez(path, imgs=np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(DataError, match="keys .* missing"):
        load_original_npz(path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match="not a .npz archive"):
        load_original_npz(path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(path=tmp_path / "missing.npz")


def test_original_npz_layout_is_read(monkeypatch, tmp_path):
    import betavae.data.dsprites as ds

    monkeypatch.setattr(ds, "FACTOR_SIZES", (1, 1, 2, 2, 2))
    classes = np.zeros((8, 6), np.int64)
    classes[:, 1:] = np.stack(np.unravel_index(np.arange(8), (1, 1, 2, 2, 2)), axis=1)
    imgs = (np.random.default_rng(0).random((8, 64, 64)) > 0.5).astype(np.uint8)
    path = tmp_path / "dsprites.npz"
    _write_npz(path, imgs=imgs, latents_classes=classes)
    packed = load_original_npz(path)
    assert np.array_equal(np.unpackbits(packed, axis=1).reshape(8, 64, 64), imgs)
    _write_npz(path, imgs=imgs, latents_classes=classes[::-1].copy())
    with pytest.raises(DataError, match="grid order"):
        load_original_npz(path)
