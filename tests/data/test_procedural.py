"""Procedural datasets: the registry, dSprites variants (Locatello et al. 2019) and colored-shapes."""

import numpy as np
import pytest
import torch

import betavae.data.dsprites as dsprites_module
from betavae.data import DATASETS, ColoredShapes, ColorDSprites, DSprites, NoisyDSprites, ScreamDSprites, load_dataset
from betavae.data.colored_shapes import FACTOR_SIZES as SHAPES_SIZES
from betavae.data.colored_shapes import hsv_to_rgb
from betavae.data.variants import SCREAM_TEXTURE_SHAPE, index_bytes, index_uniform, scream_texture
from betavae.errors import DataError


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registered_dataset_resolves_renders_and_round_trips(name):
    dataset = load_dataset(name)
    rng = np.random.default_rng(0)
    indices = rng.choice(len(dataset), 16, replace=False)
    images = dataset.images(indices)
    assert images.shape == (16, *dataset.image_shape) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    factors = dataset.index_to_factors(indices)
    assert np.array_equal(dataset.factors_to_index(factors), indices)
    assert len(dataset) == np.prod(dataset.factor_sizes)
    assert [len(v) for v in dataset.factor_values] == list(dataset.factor_sizes)
    sampled = dataset.sample_factors(100, rng)
    assert np.array_equal(dataset.index_to_factors(dataset.factors_to_index(sampled)), sampled)
    fixed = dataset.sample_factors_fixing(1, sampled[:, 1], rng)
    assert np.array_equal(fixed[:, 1], sampled[:, 1])
    with pytest.raises(DataError, match="image size|cannot apply"):
        load_dataset(name, image_size=32)


def test_index_uniform_is_a_fixed_function_of_the_index():
    indices = torch.tensor([0, 1, 2, 737279, 1])
    u = index_uniform(indices, 4096, stream=7)
    assert u.shape == (5, 4096) and u.dtype == torch.float32
    assert torch.equal(u[1], u[4])  # same index, same numbers
    assert not torch.equal(u[0], u[1])
    assert not torch.equal(u, index_uniform(indices, 4096, stream=8))  # streams are independent
    assert 0 <= u.min() and u.max() < 1
    flat = index_uniform(torch.arange(2000), 64, stream=1).flatten()
    assert abs(flat.mean().item() - 0.5) < 0.01 and abs(flat.std().item() - (1 / 12) ** 0.5) < 0.01
    histogram = torch.histc(flat, bins=10, min=0, max=1) / len(flat)
    assert torch.all((histogram - 0.1).abs() < 0.01)


def test_index_bytes_are_uniform_independent_and_fixed_per_index():
    indices = torch.tensor([4, 9, 4])
    b = index_bytes(indices, 12288, stream=2)
    assert b.shape == (3, 12288) and b.dtype == torch.uint8
    assert torch.equal(b[0], b[2]) and not torch.equal(b[0], b[1])
    assert not torch.equal(b[:1, :5], index_bytes(indices[:1], 5, stream=3))
    assert torch.equal(b[:, :7], index_bytes(indices, 7, stream=2))  # a prefix does not depend on count
    values = index_bytes(torch.arange(500), 4096, stream=2).to(torch.float64)
    counts = torch.bincount(values.flatten().long(), minlength=256)
    assert (counts / counts.double().mean() - 1).abs().max() < 0.05  # every level equally likely
    pairs = torch.stack([values[:, :-1].flatten(), values[:, 1:].flatten()])
    assert abs(torch.corrcoef(pairs)[0, 1]) < 0.01  # neighbouring pixels independent


def test_color_dsprites_colours_the_shape_only():
    dataset, shapes = ColorDSprites(), DSprites()
    indices = np.array([5, 123456, 700000])
    images, masks = dataset.images(indices), shapes.images(indices)
    assert dataset.image_shape == (3, 64, 64) and not dataset.binary
    for image, mask in zip(images, masks[:, 0]):
        assert np.all(image[:, mask == 0] == 0)  # black background
        colour = image[:, mask == 1]
        assert np.allclose(colour, colour[:, :1])  # one colour per image
        assert np.all((colour >= 0.5) & (colour <= 1.0))
    assert not np.allclose(images[0][:, masks[0, 0] == 1][:, 0], images[1][:, masks[1, 0] == 1][:, 0])
    assert np.array_equal(dataset.images(indices), images)  # deterministic per index


def test_noisy_dsprites_keeps_a_white_shape_on_noise():
    dataset, shapes = NoisyDSprites(), DSprites()
    indices = np.array([10, 400000])
    images, masks = dataset.images(indices), shapes.images(indices)
    assert np.all(images[:, :, masks[0, 0] == 1][0] == 1.0)
    background = images[0][:, masks[0, 0] == 0]
    assert abs(background.mean() - 0.5) < 0.02 and abs(background.std() - (1 / 12) ** 0.5) < 0.02
    assert np.allclose(background * 255, np.round(background * 255), atol=1e-3)  # the 256 levels of uint8
    assert not np.array_equal(images[0], dataset.images(np.array([11]))[0])
    assert np.array_equal(dataset.images(indices[:1]), images[:1])


def test_scream_dsprites_inverts_a_texture_patch_inside_the_shape():
    dataset = ScreamDSprites()
    texture = scream_texture()
    assert texture.shape == (*SCREAM_TEXTURE_SHAPE, 3) and texture.std() > 0.2
    assert torch.equal(texture, scream_texture())
    indices = torch.tensor([3, 99999])
    empty, full = torch.zeros(2, 1, 64, 64), torch.ones(2, 1, 64, 64)
    background = dataset.paint(empty, indices)
    assert torch.allclose(dataset.paint(full, indices), 1 - background)
    assert background.std() > 0.05  # a textured patch, not a flat colour
    assert not torch.allclose(background[0], background[1])  # patch and tint differ per index
    # (patch + tint) / 2 with tint in [0, 1]: the background lies in [tint/2, (1 + tint)/2] per channel
    assert background.min() >= 0 and background.max() <= 1


def test_colored_shapes_factors_change_only_what_they_should():
    dataset = ColoredShapes()
    base = np.array([[3, 1, 2, 3, 2, 8, 8]])

    def image(**changes):
        factors = base.copy()
        for k, v in changes.items():
            factors[0, dataset.factor_names.index(k)] = v
        return dataset.images_from_factors(factors)[0]

    reference = image()
    shape_mask = np.any(reference != reference[:, :1, :1], axis=0)
    assert 20 < shape_mask.sum() < 64 * 64 / 2
    hue = image(object_hue=6)
    assert np.array_equal(np.any(hue != reference, axis=0), shape_mask)  # only the shape's pixels change
    background = image(background_hue=3)
    assert np.array_equal(np.any(background != reference, axis=0), ~shape_mask)  # only the background's
    moved = image(posX=12)
    moved_mask = np.any(moved != moved[:, :1, :1], axis=0)
    assert np.nonzero(moved_mask)[1].mean() > np.nonzero(shape_mask)[1].mean() + 5
    assert np.allclose(moved[:, moved_mask][:, 0], reference[:, shape_mask][:, 0])  # same colours, moved
    for factor in ("shape", "scale", "orientation", "posY"):
        k = dataset.factor_names.index(factor)
        changed = image(**{factor: (base[0, k] + 1) % dataset.factor_sizes[k]})
        assert not np.array_equal(changed, reference), factor
        assert np.allclose(np.unique(changed.reshape(3, -1), axis=1), np.unique(reference.reshape(3, -1), axis=1))


def test_colored_shapes_orientations_never_repeat_an_image():
    dataset = ColoredShapes()
    for shape in range(4):
        factors = np.array([[0, 0, shape, 3, o, 8, 8] for o in range(SHAPES_SIZES[4])])
        flat = dataset.images_from_factors(factors).reshape(len(factors), -1)
        assert len(np.unique(flat, axis=0)) == len(factors), shape


def test_hsv_to_rgb_primaries():
    rgb = hsv_to_rgb(torch.tensor([0.0, 1 / 3, 2 / 3, 1 / 6]), 1.0, 1.0)
    assert torch.allclose(rgb, torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]), atol=1e-6)
    assert torch.allclose(hsv_to_rgb(torch.tensor([0.3]), 0.0, 0.5), torch.full((1, 3), 0.5))


def test_colored_shapes_store_matches_images():
    dataset = ColoredShapes()
    store = dataset.training_store("cpu")
    assert len(store) == len(dataset) and store.nbytes == 32768 * 512
    indices = np.random.default_rng(3).choice(len(dataset), 64, replace=False)
    assert np.array_equal(store.batch(torch.from_numpy(indices)).numpy(), dataset.images(indices))


@pytest.mark.parametrize("variant", [ColorDSprites, NoisyDSprites, ScreamDSprites])
def test_variant_store_matches_images(variant, monkeypatch, tmp_path):
    small = (3, 2, 4, 4, 4)  # a small grid, so the packed masks render in a moment
    monkeypatch.setattr(dsprites_module, "FACTOR_SIZES", small)
    monkeypatch.setattr(DSprites, "factor_sizes", small)
    dataset = variant(DSprites(cache_directory=tmp_path))
    store = dataset.training_store("cpu")
    assert len(store) == len(dataset) == 384 and store.nbytes == 384 * 512  # bit-packed masks only
    indices = np.array([0, 5, 383, 5, 200])
    batch = store.batch(torch.from_numpy(indices))
    assert batch.shape == (5, 3, 64, 64)
    assert np.allclose(batch.numpy(), dataset.images(indices), atol=1e-6)
    assert torch.equal(batch[1], batch[3])
