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


QUICK = {"mig": {"num_train": 300}, "unsupervised": {"num_train": 300}}


def test_a_subset_keeps_the_other_metrics_of_an_earlier_evaluation_of_the_same_model(run_dir, capsys):
    import hashlib

    full = evaluate_run(run_dir, "mig,unsupervised", seed=1, params=QUICK, readback_images=150)
    assert full["model"] == {"step": None, "sha256": hashlib.sha256((run_dir / MODEL_FILE).read_bytes()).hexdigest()}
    assert full["kept_metrics"] == [] and "kept" not in capsys.readouterr().err
    subset = evaluate_run(run_dir, "mig", seed=1, params={"mig": {"num_train": 200}}, readback_images=0)
    assert json.loads((run_dir / "evaluation.json").read_text()) == subset
    assert list(subset["metrics"]) == ["mig", "unsupervised"] and subset["kept_metrics"] == ["unsupervised"]
    assert subset["metrics"]["unsupervised"] == full["metrics"]["unsupervised"]  # kept as it was
    assert subset["metrics"]["mig"]["parameters"]["num_train"] == 200  # the one computed now replaces the earlier
    assert subset["reconstructed_factors"] == full["reconstructed_factors"]  # same model and seed: still true
    assert "kept unsupervised from the earlier evaluation.json" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.glob("evaluation*")) == ["evaluation.json"]


@pytest.mark.parametrize("change, why", [
    ("seed", "is of seed 0"),
    ("model", "is of another model"),
    ("old record", "does not name its model"),
    ("damaged", "is not readable JSON"),
])
def test_an_earlier_evaluation_of_another_model_or_seed_is_kept_aside_not_mixed(run_dir, change, why, capsys):
    evaluate_run(run_dir, "unsupervised", seed=0, params=QUICK, readback_images=0)
    path = run_dir / "evaluation.json"
    if change == "model":
        torch.manual_seed(1)
        save_model(run_dir / MODEL_FILE, build_model("burgess", 4, (1, 64, 64)),
                   {"arch": "burgess", "latents": 4, "image_shape": [1, 64, 64]}, step=7)
    elif change == "old record":
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "model"}))
    elif change == "damaged":
        path.write_text('{"metrics": ')
    earlier = path.read_bytes()
    (run_dir / "evaluation-seed0-mean.json").write_text("a file of the user's")  # never overwritten
    record = evaluate_run(run_dir, "mig", seed=1 if change == "seed" else 0, params=QUICK, readback_images=0)
    assert list(record["metrics"]) == ["mig"] and record["kept_metrics"] == []
    assert json.loads(path.read_text()) == record
    kept_as = "evaluation-unreadable.json" if change == "damaged" else "evaluation-seed0-mean-2.json"
    assert (run_dir / kept_as).read_bytes() == earlier
    assert (run_dir / "evaluation-seed0-mean.json").read_text() == "a file of the user's"
    err = capsys.readouterr().err
    assert f"the earlier evaluation.json {why}" in err and f"kept as {kept_as}" in err and err.count("\n") == 1


def test_evaluate_run_refuses_a_bad_device_and_batch_size_before_anything(run_dir, monkeypatch):
    with pytest.raises(ConfigError, match="unknown device 'banana'; use auto, cpu, cuda or cuda:N"):
        evaluate_run(run_dir, "mig", device="banana")
    for bad in (0, 2**40, 2.5, True):
        with pytest.raises(ConfigError, match="--batch-size must be a whole number from 1 to"):
            evaluate_run(run_dir, "mig", batch_size=bad)
    monkeypatch.setattr("betavae.metrics.run.device_memory", lambda device: (16 * 2**30, "this machine's memory"))
    with pytest.raises(ConfigError, match=r"encoding 1,000,000,000 images per pass would need about .* but this "
                                          r"machine's memory is 16.0 GiB; lower --batch-size to at most [0-9,]+ "):
        evaluate_run(run_dir, "mig", batch_size=10**9, params=PARAMS)
    assert not (run_dir / "evaluation.json").exists()


def test_evaluate_run_refuses_data_that_does_not_fit_the_model(run_dir):
    from betavae.errors import DataError

    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "dataset": "color-dsprites"}))
    with pytest.raises(DataError, match=r"data \(color-dsprites\) have 3 channels of 64x64 pixels, but its model was "
                                        r"trained on images with 1 channel of 64x64 pixels: the run's data has changed"):
        evaluate_run(run_dir, "mig", params=PARAMS)
    assert not (run_dir / "evaluation.json").exists()
