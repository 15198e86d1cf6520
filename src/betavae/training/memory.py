"""The memory a training run needs, estimated before anything is made, so that a config far beyond
the machine (``--latents 1000000000``, ``--batch-size 500000``) is a one-line error, not a crash.

The estimate builds the model on PyTorch's ``meta`` device (shapes only, no memory) and follows
its layers' shapes: the parameters count 16 bytes each (fp32 weights, gradients and Adam's two
moments) and every layer's output counts once per image of a batch, in the precision of the
forward pass. On a CPU it is within about 10% of the measured peak of a training step (burgess,
locatello and mlp at 32 and 64 pixels). The dataset, the objective's own networks and the
framework's overhead are not counted, so a refused config is clearly beyond the machine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from betavae.errors import ConfigError
from betavae.models import VAE, build_model
from betavae.models.architectures import SpatialBroadcast

BYTES_PER_PARAMETER = 16  # fp32 weight, gradient, Adam's first and second moments
GIB = 2**30
#: Below this, a run fits any machine betavae runs on: the memory is not looked up.
ALWAYS_FITS = GIB
#: A latent or batch size beyond this is refused without building anything (no machine holds it).
MAX_SIZE = 2**36


@dataclass(frozen=True)
class Estimate:
    parameters: int  # how many
    parameter_bytes: int  # with gradients and Adam's moments
    bytes_per_image: int  # activations of one image in a training step

    def total(self, batch_size: int) -> int:
        return self.parameter_bytes + batch_size * self.bytes_per_image


def estimate(arch: str, latents: int, image_shape: tuple[int, int, int], width: int | None = None,
             activation_bytes: int = 4) -> Estimate:
    """The memory of a model's training step, from its shapes (the model is built on the meta device)."""
    with torch.device("meta"):
        model = build_model(arch, latents, image_shape, width)
    parameters = sum(p.numel() for p in model.parameters())
    outputs = layer_outputs(model, image_shape) + 3 * latents  # and the noise, z and KL terms of each image
    return Estimate(parameters, parameters * BYTES_PER_PARAMETER, outputs * activation_bytes)


def layer_outputs(model: VAE, image_shape: tuple[int, int, int]) -> int:
    """How many numbers every layer of ``model`` outputs for one image, summed.

    The layers are followed in the order they are registered, which is the order they run in
    betavae's architectures; a convolution after a reshape takes the square feature map of its
    input size. Computed from the shapes alone, with no forward pass.
    """
    total, size = 0, math.prod(image_shape)
    for module in (*model.encoder.modules(), *model.decoder.modules()):
        if next(module.children(), None) is not None:
            continue
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            side = math.isqrt(size // module.in_channels)
            (k, _), (stride, _), (pad, _) = module.kernel_size, module.stride, module.padding
            if isinstance(module, nn.Conv2d):
                side = (side + 2 * pad - k) // stride + 1
            else:
                side = (side - 1) * stride - 2 * pad + k + module.output_padding[0]
            size = module.out_channels * side * side
        elif isinstance(module, nn.Linear):
            size = module.out_features
        elif isinstance(module, SpatialBroadcast):
            size = (module.latents + 2) * module.side * module.side
        total += size  # activations and Flatten keep the size
    return total


def device_memory(device: str) -> tuple[int, str] | None:
    """``(bytes, description)`` of the memory a run on ``device`` can use; None when it cannot tell."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not cuda:
        total = _ram()
        return None if total is None else (total, "this machine's memory")
    if not torch.cuda.is_available():
        return None  # reported when the run starts
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if index >= torch.cuda.device_count():
        return None
    return torch.cuda.get_device_properties(index).total_memory, f"the memory of cuda:{index}"


def _ram() -> int | None:
    """Physical memory, or a lower limit this process is held to (a container's cgroup)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
        break
    return total


def check_memory(arch: str, latents: int, batch_size: int, image_shape: tuple[int, int, int], width: int | None,
                 device: str, precision: str) -> None:
    """Refuse a run whose training step would clearly need more memory than ``device`` has."""
    for name, value in (("latents", latents), ("batch_size", batch_size), ("width", width or 1)):
        if value > MAX_SIZE:
            raise ConfigError(f"{name} {value:,} is far beyond what any machine can train (its tensors alone would "
                              f"need more than {MAX_SIZE * 4 // GIB:,} GiB); use a value in the tens to thousands.")
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    low_precision = precision == "bf16" or (precision == "auto" and not on_cpu)
    need = estimate(arch, latents, image_shape, width, 2 if low_precision else 4)
    total = need.total(batch_size)
    if total < ALWAYS_FITS:
        return
    memory = device_memory(device)
    if memory is None or total <= memory[0]:
        return
    have, where = memory
    parts = (f"the model's {need.parameters:,} parameters need {_size(need.parameter_bytes)} with their gradients and "
             f"Adam's moments, a batch of {batch_size:,} images {_size(batch_size * need.bytes_per_image)}")
    if need.parameter_bytes >= have:
        fix = "lower --latents" + (" or --width" if width is not None else "")
    else:
        fits = (have - need.parameter_bytes) // need.bytes_per_image
        fix = f"lower --batch-size to at most {fits:,}" if fits >= 1 else "lower --latents"
    raise ConfigError(f"training would need about {_size(total)} ({parts}) but {where} is {_size(have)}; {fix}.")


def _size(n: int) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= GIB else f"{n / 2**20:,.1f} MiB"
