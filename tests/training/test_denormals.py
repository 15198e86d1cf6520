"""Subnormal floats are flushed to zero on the CPU while training, by the command line from its start."""

import io

import pytest
import torch

import betavae
from betavae import cli

TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32; a quarter of it is subnormal


def _flushing() -> bool:
    """Whether this thread's CPU arithmetic turns a subnormal result into zero."""
    return (torch.tensor([TINY]) / 4).item() == 0.0


@pytest.fixture
def denormals_kept():
    """Each test starts with subnormals kept (PyTorch's default), and leaves the process that way."""
    torch.set_flush_denormal(False)
    if _flushing():
        pytest.skip("this CPU flushes subnormals whatever torch is told")
    yield
    torch.set_flush_denormal(False)


def test_flush_denormals_turns_subnormal_results_into_zero(denormals_kept):
    assert (torch.tensor([TINY]) / 4).item() == pytest.approx(TINY / 4)
    if not betavae.flush_denormals():
        pytest.skip("this CPU cannot flush subnormals")
    assert _flushing()
    assert (torch.tensor([TINY]) * 2).item() == pytest.approx(2 * TINY)  # normal numbers are untouched


def test_the_command_line_flushes_from_its_start(denormals_kept, capsys):
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    torch.set_flush_denormal(False)
    assert cli.main(["recipes"]) == 0
    assert _flushing()


def test_training_flushes_on_the_calling_thread(denormals_kept, small_npy, tmp_path):
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    torch.set_flush_denormal(False)
    config = betavae.TrainConfig(data=str(small_npy), steps=4, batch_size=8, latents=2, log_every=2, device="cpu",
                                 out=str(tmp_path / "run"), figures=False)
    betavae.train(config, stream=io.StringIO())
    assert _flushing()
