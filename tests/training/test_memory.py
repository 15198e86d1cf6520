"""The memory estimate of a training step, and the configs it refuses."""

import pytest
import torch

from betavae import TrainConfig
from betavae.errors import ConfigError
from betavae.models import build_model
from betavae.training import memory


def _outputs_by_forward(model, image_shape):
    """What every layer outputs for one image, counted by running the model with hooks."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        total += output.numel()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    with torch.inference_mode():
        mu, _ = model.encode(torch.zeros(1, *image_shape))
        model.decode(mu)
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.parametrize("arch, width", [("burgess", None), ("burgess", 7), ("locatello", None), ("mlp", None),
                                         ("mlp", 33), ("broadcast", None)])
@pytest.mark.parametrize("image_shape", [(1, 32, 32), (3, 64, 64), (1, 128, 128)])
def test_layer_outputs_from_shapes_match_a_forward_pass(arch, width, image_shape):
    model = build_model(arch, 5, image_shape, width)
    assert memory.layer_outputs(model, image_shape) == _outputs_by_forward(model, image_shape)


def test_estimate_counts_parameters_with_their_optimiser_state():
    need = memory.estimate("burgess", 10, (1, 64, 64))
    model = build_model("burgess", 10, (1, 64, 64))
    assert need.parameters == sum(p.numel() for p in model.parameters())
    assert need.parameter_bytes == 16 * need.parameters
    assert need.total(100) == need.parameter_bytes + 100 * need.bytes_per_image
    assert memory.estimate("burgess", 10, (1, 64, 64), activation_bytes=2).bytes_per_image * 2 == need.bytes_per_image


def test_a_billion_latents_is_estimated_without_allocating():
    need = memory.estimate("burgess", 10**9, (1, 64, 64))  # 770 billion parameters, on the meta device
    assert need.parameters > 7 * 10**11


@pytest.fixture
def small_machine(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: (8 * 2**30, "this machine's memory"))


def test_configs_beyond_the_memory_are_refused_by_validate(small_machine):
    with pytest.raises(ConfigError, match="lower --batch-size to at most"):
        TrainConfig(batch_size=100_000, out="r").validate()
    with pytest.raises(ConfigError, match="lower --latents"):
        TrainConfig(latents=10**8, out="r").validate()
    with pytest.raises(ConfigError, match="far beyond what any machine can train"):
        TrainConfig(batch_size=2**40, out="r").validate()
    TrainConfig(batch_size=4096, out="r").validate()  # about 2.8 GiB: fits


def test_small_configs_never_ask_for_the_memory(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: pytest.fail("memory looked up for a small run"))
    TrainConfig(out="r").validate()
    TrainConfig(arch="mlp", batch_size=256, out="r").validate()


def test_bf16_halves_the_activations(small_machine):
    TrainConfig(batch_size=20_000, out="r", precision="bf16", device="cpu").validate()  # about 6.7 GiB
    with pytest.raises(ConfigError, match="lower --batch-size"):
        TrainConfig(batch_size=20_000, out="r", precision="fp32", device="cpu").validate()  # about 13.5 GiB


def test_device_memory_of_the_cpu_is_positive():
    have, where = memory.device_memory("cpu")
    assert have > 2**28 and "machine" in where
