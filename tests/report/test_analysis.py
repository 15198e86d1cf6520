import numpy as np
import pytest
import torch

from betavae.errors import DataError
from betavae.metrics.utils import discrete_entropy
from betavae.report.analysis import (code_factor_information, factors_in_reconstructions, mean_code_by_factor,
                                     mutual_information_matrix, pair_angles, rotated_pairs, rotation_sentence)
from tests.metrics.conftest import FactorGrid
from tests.report.conftest import TurnedEncoder


def _factors(n=4000, sizes=(3, 8), seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, size=n) for s in sizes], axis=1)


def test_a_code_that_copies_a_factor_shares_all_its_entropy_and_noise_shares_none():
    factors = _factors()
    rng = np.random.default_rng(1)
    codes = np.stack([factors[:, 0] + 0.01 * rng.standard_normal(len(factors)),  # encodes factor 0 exactly
                      rng.standard_normal(len(factors))], axis=1)  # encodes nothing
    mi = mutual_information_matrix(codes, factors)
    h = discrete_entropy(factors)
    assert h == pytest.approx([np.log(3), np.log(8)], abs=0.01)
    assert mi[0, 0] == pytest.approx(h[0], rel=1e-6)
    # independent noise: only the plug-in estimator's small positive bias, ~ (bins-1)(levels-1) / 2N
    assert 0 <= mi[1, 0] < 0.02 and 0 <= mi[1, 1] < 0.05
    assert 0.0 < mi[0, 1] < 0.01


def test_plugin_estimate_matches_the_formula_on_a_hand_made_table():
    # codes in two bins, factor with two values: joint counts [[3, 1], [1, 3]] of 8
    codes = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=float)[:, None]
    factors = np.array([0, 0, 0, 1, 0, 1, 1, 1])[:, None]
    p = np.array([[3, 1], [1, 3]]) / 8
    expected = np.sum(p * np.log(p / 0.25))
    assert mutual_information_matrix(codes, factors, num_bins=2)[0, 0] == pytest.approx(expected)


def test_mean_code_by_factor_is_the_group_mean_and_spread():
    factors = _factors(n=500, sizes=(4, 5))
    factors[factors[:, 1] == 3, 1] = 2  # no image has value 3 of factor 1
    codes = np.random.default_rng(3).standard_normal((500, 2)) + factors[:, :1]
    summaries = mean_code_by_factor(codes, factors, (4, 5))
    for k, (mean, std) in enumerate(summaries):
        assert mean.shape == std.shape == (2, (4, 5)[k])
        for value in range((4, 5)[k]):
            group = codes[factors[:, k] == value]
            if len(group) == 0:
                assert np.isnan(mean[:, value]).all()
            else:
                np.testing.assert_allclose(mean[:, value], group.mean(0), atol=1e-9)
                np.testing.assert_allclose(std[:, value], group.std(0), atol=1e-7)
    assert np.isnan(summaries[1][0][:, 3]).all()


NAMES = ["shape", "scale", "posX", "posY"]


def _position_factors(n=4000, seed=0):
    """Class indices of dSprites-like factors: shape (3), scale (6), posX and posY (32 each)."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.integers(0, size, n) for size in (3, 6, 32, 32)])


def _code(factors, degrees, dims=(2, 5), latents=8, flip=False, seed=1):
    """A code whose dims ``dims`` hold posX and posY turned by ``degrees``, scale on dim 0, the rest noise."""
    rng = np.random.default_rng(seed)
    v = factors.astype(np.float64)
    v = (v - v.mean(0)) / v.std(0)
    theta = np.radians(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    codes = rng.normal(0, 0.05, (len(v), latents))
    codes[:, list(dims)] += v[:, [2, 3]] @ rotation.T * np.array([1.0, 0.8])  # unequal scales: not a pure rotation
    codes[:, 0] += v[:, 1]
    if flip:
        codes[:, dims[1]] *= -1
    return codes


@pytest.mark.parametrize("degrees, expected", [(30, 30), (-30, 30), (45, 45), (70, 20), (120, 30)])
def test_a_turned_pair_of_positions_is_found_with_its_angle(degrees, expected):
    factors = _position_factors()
    for flip in (False, True):
        (pair,) = rotated_pairs(_code(factors, degrees, flip=flip), factors, NAMES)
        assert pair["factors"] == ("posX", "posY") and pair["dims"] == (2, 5)
        assert abs(pair["angle"] - expected) < 1.5, pair
        assert min(pair["r2"]) > 0.9
    assert rotation_sentence(pair).startswith("posX and posY share z2 and z5, turned")


@pytest.mark.parametrize("degrees", [0, 4, 90, 180, 268])
def test_pairs_on_the_axes_or_nearly_are_not_reported(degrees):
    factors = _position_factors()
    codes = _code(factors, degrees, dims=(6, 1))
    assert rotated_pairs(codes, factors, NAMES) == []
    (pair,) = [p for p in pair_angles(codes, factors, NAMES) if p["factors"] == ("posX", "posY")]  # its small angle
    assert pair["dims"] == (1, 6) and abs(pair["angle"] - min(degrees % 90, 90 - degrees % 90)) < 1.5


def test_two_dims_that_hold_one_factor_and_categories_are_not_a_turned_pair():
    factors = _position_factors()
    v = (factors - factors.mean(0)) / factors.std(0)
    rng = np.random.default_rng(2)
    codes = rng.normal(0, 0.05, (len(v), 4))
    codes[:, 0] = v[:, 2] * 0.7 + v[:, 3] * 0.05  # both dims follow posX: a fit of rank ~1
    codes[:, 1] = v[:, 2] * 0.7 - v[:, 3] * 0.05
    assert rotated_pairs(codes, factors, NAMES) == []
    codes[:, 0] = v[:, 0] + v[:, 1]  # shape (3 classes) and scale at 45°: shape is not fitted linearly
    codes[:, 1] = v[:, 0] - v[:, 1]
    assert rotated_pairs(codes, factors, NAMES) == []


def test_noise_alone_finds_nothing():
    factors = _position_factors()
    assert rotated_pairs(np.random.default_rng(3).normal(size=(len(factors), 6)), factors, NAMES) == []
    assert rotated_pairs(np.zeros((len(factors), 6)), factors, NAMES) == []



def test_code_factor_information_finds_the_turn_of_a_real_encoding():
    sizes = (3, 6, 40, 32, 32)
    found = code_factor_information(TurnedEncoder(25.0, sizes), FactorGrid(sizes), n=3000, seed=0)
    assert found.names == ["f0", "f1", "f2", "f3", "f4"] and found.mi.shape == (6, 5)
    (pair,) = found.rotated_pairs()
    assert pair["factors"] == ("f3", "f4") and pair["dims"] == (1, 4) and abs(pair["angle"] - 25.0) < 1.0
    assert code_factor_information(TurnedEncoder(0.0, sizes), FactorGrid(sizes), n=3000).rotated_pairs() == []


class UnitGrid(FactorGrid):
    """FactorGrid whose pixel k is factor k's class index scaled to [0, 1]."""

    def images(self, indices: np.ndarray) -> np.ndarray:
        scale = np.maximum(np.array(self.factor_sizes, dtype=np.float32) - 1, 1)
        return super().images(indices) / scale.reshape(1, 1, 1, -1)


class PixelCopy(torch.nn.Module):
    """An 'autoencoder' of 1x1xK images: its code is the image; its decoder draws the code, except the pixels
    ``forget``, which it draws grey (0.5) whatever the input."""

    def __init__(self, k: int, forget: tuple[int, ...] = ()):
        super().__init__()
        self.latents, self.forget = k, list(forget)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # a device to be found on

    def encode(self, x):
        flat = x.reshape(len(x), -1)
        return flat, torch.zeros_like(flat)

    def decode(self, z):
        drawn = z.clone()
        drawn[:, self.forget] = 0.5
        return torch.logit(drawn.clamp(1e-4, 1 - 1e-4)).reshape(len(z), 1, 1, -1)  # decoded_mean is the sigmoid


def test_reconstructions_that_copy_the_input_show_every_factor():
    sizes = (3, 6, 5)
    found = factors_in_reconstructions(PixelCopy(3), UnitGrid(sizes), n=300, seed=0)
    assert [r["factor"] for r in found] == ["f0", "f1", "f2"] and [r["values"] for r in found] == list(sizes)
    assert all(r["accuracy"] == 1.0 and r["images"] == 300 for r in found)


def test_a_factor_the_decoder_forgets_is_shown_only_where_grey_is_its_value():
    # pixel 0 drawn 0.5 always: of the values 0, 0.5, 1 of a 3-valued factor, grey is nearest to 0.5 alone,
    # so the reconstruction shows f0 for the third of the images whose f0 is the middle value, and no others
    sizes = (3, 6, 4)
    grid = UnitGrid(sizes)
    found = {r["factor"]: r for r in factors_in_reconstructions(PixelCopy(3, forget=(0,)), grid, n=1200, seed=1)}
    middle = (grid.sample_factors(1200, np.random.default_rng(1))[:, 0] == 1).mean()  # the same draw
    assert found["f0"]["accuracy"] == pytest.approx(middle, abs=1e-4) and 0.28 < middle < 0.39
    assert found["f1"]["accuracy"] == 1.0 and found["f2"]["accuracy"] == 1.0
    # the floor is that of the mean image, which ignores the code: grey-ish in every pixel, it shows f1's
    # middle values at most (0.4 or 0.6 of 0, 0.2, ..., 1), about one image in six
    assert 0.1 < found["f1"]["floor"] < 0.25


def test_images_identical_to_the_input_are_not_held_against_a_reconstruction():
    class Ignored(UnitGrid):  # factor 1 is not drawn: its values all give the same image
        def images(self, indices):
            out = super().images(indices)
            out[..., 1] = 0.0
            return out

    found = {r["factor"]: r for r in factors_in_reconstructions(PixelCopy(3), Ignored((3, 4, 5)), n=200, seed=0)}
    assert found["f1"]["accuracy"] == 1.0 and found["f0"]["accuracy"] == 1.0


def test_reading_back_needs_a_full_grid_and_an_image_count():
    class Partial(UnitGrid):
        @property
        def is_full_grid(self):
            return False

    with pytest.raises(DataError, match="full factor grid"):
        factors_in_reconstructions(PixelCopy(3), Partial((3, 4, 5)), n=10)
    with pytest.raises(DataError, match="at least 1"):
        factors_in_reconstructions(PixelCopy(3), UnitGrid((3, 4, 5)), n=0)
