"""Subnormal floats are flushed to zero on the CPU while betavae trains (the command line: while it runs), and
the caller's setting comes back afterwards."""

import io

import pytest
import torch

import betavae
from betavae import cli
from betavae.training import loop

TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32; a quarter of it is subnormal


def _flushing() -> bool:
    """Whether this thread's CPU arithmetic turns a subnormal result into zero."""
    return (torch.tensor([TINY]) / 4).item() == 0.0


@pytest.fixture
def denormals_kept():
    """Each test starts with subnormals kept (PyTorch's default), and leaves the process that way."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    torch.set_flush_denormal(False)
    if _flushing():
        pytest.skip("this CPU flushes subnormals whatever torch is told")
    yield
    torch.set_flush_denormal(False)


def test_flush_denormals_turns_subnormal_results_into_zero(denormals_kept):
    assert (torch.tensor([TINY]) / 4).item() == pytest.approx(TINY / 4)
    assert betavae.flush_denormals()
    assert _flushing()
    assert (torch.tensor([TINY]) * 2).item() == pytest.approx(2 * TINY)  # normal numbers are untouched


def test_the_command_line_flushes_while_it_runs_and_restores(denormals_kept, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "cmd_recipes", lambda args: seen.append(_flushing()) or 0)
    assert cli.main(["recipes"]) == 0
    assert seen == [True] and not _flushing()


def test_training_flushes_while_it_runs_and_restores(denormals_kept, small_npy, tmp_path, monkeypatch):
    seen = []
    run_steps = loop.run_steps

    def watched(*args, **kwargs):
        seen.append(_flushing())
        return run_steps(*args, **kwargs)

    monkeypatch.setattr(loop, "run_steps", watched)
    config = betavae.TrainConfig(data=str(small_npy), steps=4, batch_size=8, latents=2, log_every=2, device="cpu",
                                 out=str(tmp_path / "run"), figures=False)
    betavae.train(config, stream=io.StringIO())
    assert seen == [True] and not _flushing()
    # a caller who flushes them already keeps that
    betavae.flush_denormals()
    betavae.resume(tmp_path / "run", steps=6, stream=io.StringIO())
    assert seen == [True, True] and _flushing()
