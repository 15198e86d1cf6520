"""Encoder and decoder networks, by name.

``burgess``   Burgess et al. 2018 ("Understanding disentangling in β-VAE"), as in most PyTorch ports:
              conv 32 (4x4, stride 2, pad 1) per halving down to 4x4, fc 256, fc 256, linear to
              2*z; the decoder mirrors it with transposed convolutions. Default.
``locatello`` disentanglement_lib's ``conv_encoder``/``deconv_decoder`` (Locatello et al. 2019):
              conv 32, 32 (4x4 s2), 64, 64 (2x2 s2), fc 256; decoder fc 256, fc 1024 -> 64x4x4,
              deconv 64, 32, 32, C (4x4 s2).
``mlp``       Higgins et al. 2017's dSprites MLP: encoder 1200-1200 ReLU, decoder 1200-1200-1200 tanh.
``broadcast`` the ``locatello`` encoder with a spatial broadcast decoder (Watters et al. 2019, "Spatial
              Broadcast Decoder"): the code is tiled over a grid at a quarter of the image's side, two
              fixed coordinate channels (x, y in [-1, 1]) are appended, two 3x3 convolutions of 32
              channels (``--width``) follow, then two transposed convolutions (4x4 s2) up to the
              image. The paper's decoder broadcasts at full resolution with four 3x3 convolutions of
              64 channels; this one costs about what the ``locatello`` decoder costs on a CPU
              (docs/recipes.md).

The convolutional nets adapt to square images of 32, 64 or 128 pixels by the number of halvings
(the published nets are the 64-pixel case). Decoders return logits (or means) ``(B, C, H, W)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from betavae.errors import ConfigError

SUPPORTED_SIZES = (32, 64, 128)


def _relu() -> nn.ReLU:
    """ReLU in place: every ReLU here follows a layer whose backward pass does not need its output, so
    overwriting it is safe, and it saves a tensor per layer (about 1.15x training throughput on a CPU,
    docs/performance.md)."""
    return nn.ReLU(inplace=True)


def _halvings(image_shape: tuple[int, int, int], arch: str) -> int:
    _, h, w = image_shape
    if h != w or h not in SUPPORTED_SIZES:
        raise ConfigError(
            f"architecture '{arch}' supports square images of {', '.join(map(str, SUPPORTED_SIZES))} "
            f"pixels, got {h}x{w}; resize the images to one of these sizes."
        )
    return int(math.log2(h // 4))  # down to a 4x4 feature map


class BurgessEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latents: int, channels: int = 32, hidden: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = image_shape[0]
        for _ in range(_halvings(image_shape, "burgess")):
            layers += [nn.Conv2d(in_ch, channels, 4, 2, 1), _relu()]
            in_ch = channels
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * 16, hidden), _relu(), nn.Linear(hidden, hidden), _relu()
        )
        self.head = nn.Linear(hidden, 2 * latents)  # (mu, logvar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.conv(x)))  # (B, 2z)


class BurgessDecoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latents: int, channels: int = 32, hidden: int = 256):
        super().__init__()
        self.channels = channels
        self.fc = nn.Sequential(
            nn.Linear(latents, hidden), _relu(), nn.Linear(hidden, hidden), _relu(),
            nn.Linear(hidden, channels * 16), _relu(),
        )
        n = _halvings(image_shape, "burgess")
        layers: list[nn.Module] = []
        for i in range(n):
            last = i == n - 1
            layers.append(nn.ConvTranspose2d(channels, image_shape[0] if last else channels, 4, 2, 1))
            if not last:
                layers.append(_relu())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.channels, 4, 4)
        return self.deconv(h)  # (B, C, H, W) logits


class LocatelloEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latents: int):
        super().__init__()
        n = _halvings(image_shape, "locatello")
        widths = [32] * (n - 2) + [64, 64]  # the 64-pixel net: 32, 32, 64, 64
        kernels = [4] * (n - 2) + [2, 2]
        layers: list[nn.Module] = []
        in_ch = image_shape[0]
        for width, k in zip(widths, kernels):
            layers += [nn.Conv2d(in_ch, width, k, 2, 1 if k == 4 else 0), _relu()]
            in_ch = width
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, 256), _relu())
        self.head = nn.Linear(256, 2 * latents)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.conv(x)))


class LocatelloDecoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latents: int):
        super().__init__()
        n = _halvings(image_shape, "locatello")
        self.fc = nn.Sequential(nn.Linear(latents, 256), _relu(), nn.Linear(256, 1024), _relu())
        widths = [64] + [32] * (n - 2) + [image_shape[0]]  # the 64-pixel net: 64, 32, 32, C
        layers: list[nn.Module] = []
        in_ch = 64
        for i, width in enumerate(widths):
            layers.append(nn.ConvTranspose2d(in_ch, width, 4, 2, 1))
            if i < len(widths) - 1:
                layers.append(_relu())
            in_ch = width
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(-1, 64, 4, 4))


class MLPEncoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latents: int, hidden: int = 1200):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(image_shape), hidden), _relu(),
            nn.Linear(hidden, hidden), _relu(), nn.Linear(hidden, 2 * latents),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latents: int, hidden: int = 1200):
        super().__init__()
        self.image_shape = image_shape
        self.net = nn.Sequential(
            nn.Linear(latents, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, math.prod(image_shape)),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.image_shape)


class SpatialBroadcast(nn.Module):
    """``(B, z) -> (B, z + 2, side, side)``: the code tiled over a ``side`` x ``side`` grid, with the x and
    then the y coordinate of each cell (from -1 to 1) as two more channels."""

    def __init__(self, latents: int, side: int):
        super().__init__()
        self.latents, self.side = latents, side
        steps = torch.linspace(-1.0, 1.0, side)
        y, x = torch.meshgrid(steps, steps, indexing="ij")
        # not saved with the weights: fixed by the shape alone
        self.register_buffer("coords", torch.stack([x, y]).unsqueeze(0), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        tiled = z[:, :, None, None].expand(b, self.latents, self.side, self.side)
        return torch.cat([tiled, self.coords.to(z.dtype).expand(b, 2, self.side, self.side)], 1)


class BroadcastDecoder(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latents: int, channels: int = 32):
        super().__init__()
        _halvings(image_shape, "broadcast")
        self.net = nn.Sequential(
            SpatialBroadcast(latents, image_shape[1] // 4),
            nn.Conv2d(latents + 2, channels, 3, 1, 1), _relu(),
            nn.Conv2d(channels, channels, 3, 1, 1), _relu(),
            nn.ConvTranspose2d(channels, channels, 4, 2, 1), _relu(),
            nn.ConvTranspose2d(channels, image_shape[0], 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def check_image_shape(arch: str, image_shape: tuple[int, int, int]) -> None:
    """Raise :class:`ConfigError` when ``arch`` cannot take images of ``image_shape`` ``(C, H, W)``."""
    if image_shape[0] not in (1, 3):
        raise ConfigError(f"images must have 1 or 3 channels, got {image_shape[0]}.")
    if ARCHITECTURES[arch][2]:
        _halvings(image_shape, arch)


#: name -> (encoder class, decoder class, uses convolutions)
ARCHITECTURES: dict[str, tuple[type[nn.Module], type[nn.Module], bool]] = {
    "burgess": (BurgessEncoder, BurgessDecoder, True),
    "locatello": (LocatelloEncoder, LocatelloDecoder, True),
    "mlp": (MLPEncoder, MLPDecoder, False),
    "broadcast": (LocatelloEncoder, BroadcastDecoder, True),
}

# The constructor arguments that ``width`` sets, (encoder's, decoder's), per architecture that has one;
# None: that net's widths are fixed (broadcast's encoder is locatello's).
WIDTH_PARAMETER: dict[str, tuple[str | None, str]] = {
    "burgess": ("channels", "channels"), "mlp": ("hidden", "hidden"), "broadcast": (None, "channels")}
