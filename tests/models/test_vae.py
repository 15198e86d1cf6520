import pytest
import torch

from betavae.errors import ConfigError
from betavae.models import ARCHITECTURES, build_model


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("size,channels", [(32, 3), (64, 1), (128, 1)])
def test_shapes(arch, size, channels):
    model = build_model(arch, latents=7, image_shape=(channels, size, size))
    x = torch.rand(3, channels, size, size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 7)
    assert model.decode(mu).shape == x.shape
    out = model(x)
    assert out.z.shape == (3, 7) and out.recon.shape == x.shape


def test_published_burgess_layout_at_64_pixels():
    model = build_model("burgess", 10, (1, 64, 64))
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (4, 4), (2, 2))] * 4
    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 256), (256, 256), (256, 20)]


def test_published_locatello_layout_at_64_pixels():
    model = build_model("locatello", 10, (1, 64, 64))
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(32, 4), (32, 4), (64, 2), (64, 2)]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [d.out_channels for d in deconvs] == [64, 32, 32, 1]


def test_broadcast_decoder_tiles_the_code_beside_the_coordinates():
    from betavae.models.architectures import SpatialBroadcast

    grid = SpatialBroadcast(latents=3, side=16)(torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 7.0]]))
    assert grid.shape == (2, 5, 16, 16)
    assert torch.equal(grid[0, 1], torch.full((16, 16), -2.0)) and torch.equal(grid[1, 2], torch.full((16, 16), 7.0))
    x, y = grid[0, 3], grid[0, 4]
    assert torch.equal(x[5], torch.linspace(-1, 1, 16)) and torch.equal(x[:, 5], torch.full((16,), float(x[0, 5])))
    assert torch.equal(y[:, 5], torch.linspace(-1, 1, 16)) and torch.equal(grid[1, 3:], grid[0, 3:])


def test_broadcast_layout_and_weights_without_the_fixed_grid():
    model = build_model("broadcast", 10, (1, 64, 64))
    convs = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert [(type(c).__name__, c.in_channels, c.out_channels) for c in convs] == [
        ("Conv2d", 12, 32), ("Conv2d", 32, 32), ("ConvTranspose2d", 32, 32), ("ConvTranspose2d", 32, 1)]
    assert not any("coords" in key for key in model.state_dict())  # the grid is rebuilt, not stored
    twin = build_model("broadcast", 10, (1, 64, 64))
    twin.load_state_dict(model.state_dict())
    z = torch.randn(4, 10)
    torch.testing.assert_close(twin.decode(z), model.decode(z))


def test_broadcast_width_sets_the_decoder_alone():
    model = build_model("broadcast", 10, (1, 64, 64), width=48)
    assert [m.out_channels for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)] == [48, 48]
    encoder = build_model("broadcast", 10, (1, 64, 64)).encoder
    assert [p.shape for p in model.encoder.parameters()] == [p.shape for p in encoder.parameters()]


def test_bad_model_arguments():
    with pytest.raises(ConfigError, match="latents must be at least 1"):
        build_model("burgess", 0, (1, 64, 64))
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model("resnet", 10, (1, 64, 64))
    with pytest.raises(ConfigError, match="square images of 32, 64, 128"):
        build_model("burgess", 10, (1, 48, 48))


def test_width_sets_channels_and_hidden_units_and_round_trips_through_the_spec():
    from betavae.models import model_from_spec, model_spec

    narrow = build_model("burgess", 10, (1, 64, 64), width=16)
    convs = [m for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 16, 16]
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in build_model("burgess", 10, (1, 64, 64)).parameters())
    mlp = build_model("mlp", 4, (1, 32, 32), width=64)
    assert mlp.encoder.net[1].out_features == 64
    spec = model_spec("burgess", 10, (1, 64, 64), 16)
    rebuilt = model_from_spec(spec)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in narrow.parameters()]
    assert "width" not in model_spec("burgess", 10, (1, 64, 64))  # the published width: as before
    x = torch.rand(2, 1, 64, 64)
    assert rebuilt(x).recon.shape == x.shape


def test_width_is_refused_where_the_architecture_fixes_it():
    with pytest.raises(ConfigError, match="fixed published widths"):
        build_model("locatello", 10, (1, 64, 64), width=16)
    with pytest.raises(ConfigError, match="width must be"):
        build_model("burgess", 10, (1, 64, 64), width=0)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_output_bias_draws_the_given_image_when_the_last_weights_are_zero(arch):
    from betavae.models import init_output_bias

    torch.manual_seed(0)
    model = build_model(arch, latents=4, image_shape=(3, 32, 32))
    image = torch.rand(3, 32, 32)
    init_output_bias(model, image)
    last = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))][-1]
    with torch.no_grad():
        last.weight.zero_()
        out = torch.sigmoid(model.decode(torch.randn(5, 4)))
    # mlp has a bias per pixel: the image itself; the conv nets one per channel: the channel's mean
    expected = image if arch == "mlp" else image.mean((1, 2), keepdim=True).expand_as(image)
    torch.testing.assert_close(out, expected.expand_as(out))


def test_output_bias_refuses_an_image_that_fits_no_bias():
    from betavae.models import init_output_bias

    with pytest.raises(ConfigError, match="output bias"):
        init_output_bias(build_model("burgess", 4, (1, 32, 32)), torch.zeros(3, 32, 32))
