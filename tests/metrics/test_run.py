import json

import numpy as np
import pytest
import torch

from betavae.errors import ConfigError
from betavae.metrics import encoder_fn, evaluate, evaluate_run, format_table
from betavae.models import build_model
from betavae.training.config import TrainConfig
from betavae.training.loop import save_model
from betavae.training.rundir import MODEL_FILE

PARAMS = {"mig": {"num_train": 300}, "unsupervised": {"num_train": 300}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("burgess", 4, (1, 64, 64)).eval()


@pytest.fixture
def run_dir(tmp_path, model):
    config = TrainConfig(dataset="dsprites", latents=4, arch="burgess")
    config.save(tmp_path / "config.json")
    save_model(tmp_path / MODEL_FILE, model, {"arch": "burgess", "latents": 4, "image_shape": [1, 64, 64]})
    return tmp_path


def test_encoder_fn_mean_and_sampled(model):
    images = (np.random.default_rng(0).random((5, 1, 64, 64)) > 0.5).astype(np.float32)
    with torch.no_grad():
        mu, logvar = model.encode(torch.from_numpy(images))
    mean = encoder_fn(model, batch_size=2)
    assert np.allclose(mean(images), mu.numpy(), atol=1e-6)
    codes, mu2, logvar2 = mean.codes_and_posterior(images)
    assert np.array_equal(codes, mu2) and np.allclose(logvar2, logvar.numpy(), atol=1e-6)
    first = encoder_fn(model, "sampled", generator=torch.Generator().manual_seed(1))(images)
    again = encoder_fn(model, "sampled", generator=torch.Generator().manual_seed(1))(images)
    assert np.array_equal(first, again) and not np.allclose(first, mu.numpy())
    with pytest.raises(ConfigError, match="representation"):
        encoder_fn(model, "median")


def test_evaluate_run_writes_a_complete_record(run_dir, model):
    record = evaluate_run(run_dir, "mig,unsupervised", seed=2, batch_size=256, params=PARAMS, readback_images=150)
    assert json.loads((run_dir / "evaluation.json").read_text()) == record
    assert not list(run_dir.glob(".evaluation.json*"))  # no temporary file left behind
    from betavae.data import DSprites

    direct = evaluate(encoder_fn(model), DSprites(), "mig,unsupervised", seed=2, batch_size=256, params=PARAMS)
    assert {name: entry["values"] for name, entry in record["metrics"].items()} == direct
    entry = record["metrics"]["mig"]
    assert entry["parameters"]["num_train"] == 300 and entry["parameters"]["num_bins"] == 20
    assert entry["seed"] == 2 and entry["representation"] == "mean"
    assert {"betavae", "scikit-learn", "numpy", "torch"} <= set(record["versions"])
    assert "kl_total" in record["metrics"]["unsupervised"]["values"]  # the posterior came through
    assert "mig" in format_table(record)
    # the pairs of factors two dims follow, as the report measures them, on the evaluation's seed
    from betavae.metrics.run import factor_pairs

    assert record["factor_pairs"] == factor_pairs(model, DSprites(), seed=2)
    # which factors its reconstructions show, read back on the evaluation's seed (dSprites is a full grid)
    from betavae.report.analysis import factors_in_reconstructions

    assert record["reconstructed_factors"] == factors_in_reconstructions(model, DSprites(), 150, seed=2)
    assert [r["factor"] for r in record["reconstructed_factors"]] == list(DSprites().factor_names)


def test_evaluate_run_leaves_the_read_back_out_when_asked_and_refuses_a_bad_count(run_dir):
    record = evaluate_run(run_dir, "mig", seed=0, params=PARAMS, readback_images=0)
    assert "reconstructed_factors" not in record and "factor_pairs" in record
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match="readback_images"):
            evaluate_run(run_dir, "mig", params=PARAMS, readback_images=bad)


@pytest.mark.parametrize("degrees", [0.0, 4.0, 25.0, 40.0])
def test_factor_pairs_give_the_angle_of_a_turned_code(degrees):
    from betavae.metrics.run import factor_pairs
    from tests.metrics.conftest import FactorGrid
    from tests.report.conftest import TurnedEncoder

    sizes = (3, 6, 40, 32, 32)  # factors 3 and 4 turned by `degrees` in dims 1 and 4
    (pair,) = [p for p in factor_pairs(TurnedEncoder(degrees, sizes), FactorGrid(sizes), seed=1)
               if p["factors"] == ["f3", "f4"]]
    assert pair["dims"] == [1, 4] and abs(pair["angle"] - degrees) < 1.5
    assert pair["turned"] is (degrees >= 10) and min(pair["r2"]) > 0.9
    assert json.loads(json.dumps(pair)) == pair  # stored as it is in evaluation.json


def test_evaluation_tells_its_progress_and_the_printer_shows_it(run_dir):
    import io

    from betavae.metrics import EvaluationProgress, ProgressPrinter

    events: list[EvaluationProgress] = []
    params = {"mig": {"num_train": 1500}, "unsupervised": {"num_train": 300}}  # over one read of 1,024 images
    evaluate_run(run_dir, "mig,unsupervised", seed=2, batch_size=64, params=params, progress=events.append)
    encoding = [e for e in events if e.phase == "encoding"]
    assert len(encoding) > 1 and [e.done for e in encoding] == sorted(e.done for e in encoding)
    assert encoding[-1].done == encoding[-1].total  # every distinct image, once
    scoring = [(e.done, e.total, e.metric) for e in events if e.phase == "scoring"]
    assert scoring == [(0, 2, "mig"), (1, 2, "unsupervised")]
    assert events[-1] == EvaluationProgress("done", 2, 2)
    assert events.index(encoding[-1]) < events.index(EvaluationProgress("scoring", 0, 2, "mig"))

    stream = io.StringIO()
    printer = ProgressPrinter(stream)
    for event in events:
        printer(event)
    shown = stream.getvalue()
    assert f"encoding {encoding[-1].total:,}/{encoding[-1].total:,} distinct images (100%)" in shown
    assert "metric 1/2: mig" in shown and "metric 2/2: unsupervised" in shown
    assert shown.count(" s\n") == 2  # each metric's seconds once it finished
