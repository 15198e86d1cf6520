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


@pytest.fixture(autouse=True, scope="session")
def _no_shipped_study(tmp_path_factory):
    """Tests see no shipped study (``betavae.reference.study``) unless they ship one themselves, so that
    what a report shows does not depend on whether this checkout ships the dSprites trade-off study."""
    from betavae import reference

    mp = pytest.MonkeyPatch()
    mp.setattr(reference, "STUDIES_ROOT", tmp_path_factory.mktemp("no-studies"))
    yield
    mp.undo()


#: The hand-made sweep of ``finished_sweep``: β -> (reconstruction, MIG, FactorVAE score) of seeds 0, 1, 2.
SWEEP_VALUES = {
    1.0: ((30.0, 31.0, 32.0), (0.05, 0.10, 0.15), (0.40, 0.45, 0.50)),
    4.0: ((36.0, 38.0, 40.0), (0.30, 0.35, 0.40), (0.70, 0.75, 0.80)),
    16.0: ((60.0, 65.0, 70.0), (0.20, 0.25, 0.30), (0.60, 0.62, 0.64)),
}
#: The share of reconstructions that show the shape, per seed; β = 16's trials were not read back.
SWEEP_SHAPE_SHOWN = {1.0: (0.90, 0.95, 1.00), 4.0: (0.60, 0.65, 0.70)}


@pytest.fixture
def finished_sweep(tmp_path):
    """A finished β sweep's directory (summary.json, recommendation.json, tradeoff.png) made by the sweep's
    own output functions from the hand-made trials of :data:`SWEEP_VALUES`; the recommendation is β = 4."""
    from betavae.files import write_json_atomic
    from betavae.sweep.outputs import plot_tradeoff, write_summary
    from betavae.sweep.recommend import recommend

    out = tmp_path / "sweep"
    trials = [{"weight": weight, "seed": seed, "name": f"beta-beta{weight:g}-seed{seed}", "state": "COMPLETE",
               "run_dir": str(out / "trials" / f"beta-beta{weight:g}-seed{seed}"), "reconstruction": recon[seed],
               "kl": 20.0 / weight, "active_dims": 4, "kl_per_dim": [5.0, 0.01],
               "metrics": {"mig.mig": mig[seed], "factor_vae_score.eval_accuracy": factor[seed], "udr": 0.5}}
              for weight, (recon, mig, factor) in SWEEP_VALUES.items() for seed in range(3)]
    for t in trials:
        if t["weight"] in SWEEP_SHAPE_SHOWN:
            t["metrics"]["reconstructed_factors.shape"] = SWEEP_SHAPE_SHOWN[t["weight"]][t["seed"]]
            t["readback_floor"] = {"shape": 1 / 3}
    out.mkdir()
    write_summary(out, trials, "mig.mig")
    result = recommend(trials, "mig.mig", tolerance=0.5)
    write_json_atomic(out / "recommendation.json", {**result, "objective": "beta", "weight_field": "beta"})
    plot_tradeoff(out / "tradeoff.png", trials, "mig.mig", "β", result["weight"])
    assert result["weight"] == 4.0
    return out


@pytest.fixture
def shipped_study(tmp_path, finished_sweep, monkeypatch):
    """``finished_sweep`` shipped as the dSprites trade-off study into a folder standing in for the package's."""
    from betavae import reference

    root = tmp_path / "studies"
    monkeypatch.setattr(reference, "STUDIES_ROOT", root)
    reference.ship_study(finished_sweep, reference.TRADEOFF_STUDY,
                         command="betavae sweep --beta 1,4,16 --seeds 3 --metrics mig,factor_vae_score --out SWEEP",
                         hardware="a test machine", minutes=12.34, date="2025-01-02")
    return reference.study()
