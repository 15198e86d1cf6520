"""Shared fixtures: a private cache directory and small datasets made from the dSprites renderer."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

# The tests train tiny models (batch 16): one thread is as fast as two on a quiet machine and many
# times faster on a loaded one, where two-thread kernels spin against other processes. Subprocesses
# started by tests inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

from betavae.data.dsprites import DSprites, render


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BETAVAE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def small_images() -> np.ndarray:
    """512 dSprites images ``(512, 64, 64)`` uint8 at random factors (seed 0)."""
    factors = DSprites().sample_factors(512, np.random.default_rng(0))
    return render(factors)


@pytest.fixture
def small_npy(tmp_path, small_images):
    path = tmp_path / "small.npy"
    np.save(path, small_images)
    return path
