"""The shipped reference models load and still score what their stored evaluation says."""

import json

import pytest

from betavae import reference
from betavae.data import dataset_from_config
from betavae.errors import ConfigError
from betavae.metrics import evaluate
from betavae.metrics.run import encoder_fn
from betavae.training import TrainConfig

# Metrics re-computed in the test: the cheap part of the suite (the full suite encodes ~720,000 images).
CHEAP_METRICS = ("mig", "sap")
# Codes computed on another CPU may differ by float rounding, which can move a code across a histogram
# bin edge (MIG) or a threshold of the SAP classifiers: far below the differences between models.
TOLERANCE = 0.005

SHIPPED = reference.names()
# Read at collection, before the tests' own fixture hides the shipped studies from every other test.
STUDIES_ROOT = reference.STUDIES_ROOT
SHIPPED_STUDIES = reference.studies()


def test_the_recipes_reference_models_are_shipped():
    assert {"dsprites-fast-cpu", "dsprites-beta4"} <= set(SHIPPED)
    assert reference.DEMO_REFERENCE in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_reference_model_reproduces_its_stored_evaluation(name):
    folder = reference.path(name)
    stored = reference.evaluation(name)
    info = reference.info(name)
    for key in ("summary", "command", "steps", "train_minutes", "hardware"):
        assert key in info
    config = TrainConfig.load(folder)
    model = reference.load(name)
    assert sum(p.numel() for p in model.parameters()) * 4 < 8 * 2**20  # a few MB, as shipped
    assert (folder / "figures" / "traversals.png").is_file()
    dataset = dataset_from_config(config)
    params = {m: stored["metrics"][m]["parameters"] for m in CHEAP_METRICS}
    again = evaluate(encoder_fn(model), dataset, ",".join(CHEAP_METRICS), stored["seed"], params=params)
    for metric in CHEAP_METRICS:
        for measure, value in stored["metrics"][metric]["values"].items():
            assert again[metric][measure] == pytest.approx(value, abs=TOLERANCE), (name, metric, measure)
    # what the README and the demo quote is what the stored evaluation holds
    assert json.loads((folder / "evaluation.json").read_text()) == stored
    # every shipped record says which factors its reconstructions show; the demo's reference is read back again
    assert [r["factor"] for r in stored["reconstructed_factors"]] == list(dataset.factor_names)
    if name == reference.DEMO_REFERENCE:
        from betavae.report.analysis import factors_in_reconstructions

        images = stored["reconstructed_factors"][0]["images"]
        for was, now in zip(stored["reconstructed_factors"], factors_in_reconstructions(model, dataset, images,
                                                                                         stored["seed"])):
            assert now["accuracy"] == pytest.approx(was["accuracy"], abs=TOLERANCE), (name, now["factor"])
            assert now["floor"] == pytest.approx(was["floor"], abs=TOLERANCE), (name, now["factor"])


def test_unknown_reference_and_copy_never_overwrites(tmp_path):
    with pytest.raises(ConfigError, match="unknown reference model 'nope'"):
        reference.path("nope")
    copied = reference.copy(reference.DEMO_REFERENCE, tmp_path / "mine")
    assert (copied / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="already exists"):
        reference.copy(reference.DEMO_REFERENCE, copied)


def test_shipped_models_are_read_only():
    folder = reference.path(reference.DEMO_REFERENCE)
    import betavae
    from betavae.metrics import evaluate_run

    with pytest.raises(ConfigError, match="shipped reference model.*betavae reference --copy"):
        evaluate_run(folder, metrics="mig")
    with pytest.raises(ConfigError, match="shipped reference model"):
        betavae.resume(folder, steps=10**6)


def test_no_study_shipped_means_none_and_no_error():
    assert reference.studies() == [] and reference.study() is None  # tests/conftest.py hides the shipped ones
    assert "studies:" not in reference.format_references()


def test_a_shipped_study_is_found_with_its_files_and_provenance(shipped_study, finished_sweep):
    assert reference.studies() == [reference.TRADEOFF_STUDY]
    study = shipped_study
    assert sorted(p.name for p in study.path.iterdir()) == ["STUDY.json", "recommendation.json", "summary.json",
                                                            "tradeoff.png"]
    assert study.figure.read_bytes() == (finished_sweep / "tradeoff.png").read_bytes()
    assert study.recommended == 4.0 and study.weight_name == "β"
    assert [row["weight"] for row in study.per_weight] == [1.0, 4.0, 16.0]
    assert study.per_weight[1]["metrics"]["factor_vae_score.eval_accuracy"]["mean"] == pytest.approx(0.75)
    info = study.info
    assert info["command"].startswith("betavae sweep --beta 1,4,16") and info["hardware"] == "a test machine"
    assert (info["minutes"], info["date"], info["trials"], info["completed"]) == (12.3, "2025-01-02", 9, 9)
    assert info["weights"] == [1.0, 4.0, 16.0] and info["seeds"] == [0, 1, 2] and info["recommended"] == 4.0
    assert info["metric"] == "mig.mig" and info["made_with"].startswith("betavae ")
    # no machine's paths ship: run directories are relative to the sweep
    assert {t["run_dir"] for t in study.summary["trials"]} >= {"trials/beta-beta4-seed0"}
    assert "recommended β = 4" in reference.format_references()
    header, rows, chosen = reference.study_table(study)
    assert header == ["β", "seeds", "reconstruction NLL (nats)", "MIG", "FactorVAE score", "shape shown (%)"]
    assert rows[1] == ["4", "3", "38.0 ± 2.0", "0.350 ± 0.050", "0.750 ± 0.050", "65 ± 5"] and chosen == 1
    assert rows[2][-1] == "–"  # β = 16's trials carry no read-back


def test_ship_study_refuses_unfinished_sweeps_and_existing_studies(finished_sweep, tmp_path):
    kwargs = {"command": "betavae sweep ...", "hardware": "here", "minutes": 1.0, "root": tmp_path / "studies"}
    with pytest.raises(ConfigError, match="not a finished sweep"):
        reference.ship_study(tmp_path / "nowhere", **kwargs)
    summary = json.loads((finished_sweep / "summary.json").read_text())
    summary["trials"][0]["state"] = "MISSING"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("recommendation.json", "tradeoff.png"):
        (unfinished / name).write_bytes((finished_sweep / name).read_bytes())
    (unfinished / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="not finished .*beta-beta1-seed0"):
        reference.ship_study(unfinished, **kwargs)
    shipped = reference.ship_study(finished_sweep, **kwargs)
    with pytest.raises(ConfigError, match="already exists"):
        reference.ship_study(finished_sweep, **kwargs)
    again = reference.ship_study(finished_sweep, **{**kwargs, "minutes": 2.0}, overwrite=True)
    assert again == shipped and json.loads((again / "STUDY.json").read_text())["minutes"] == 2.0
    assert [p.name for p in again.parent.iterdir()] == [reference.TRADEOFF_STUDY]  # no staging folder left


@pytest.mark.parametrize("name", SHIPPED_STUDIES)
def test_shipped_study_is_complete(name, monkeypatch):
    monkeypatch.setattr(reference, "STUDIES_ROOT", STUDIES_ROOT)
    study = reference.study(name)
    assert study.figure is not None and study.figure.stat().st_size > 10_000
    for key in ("command", "hardware", "date", "minutes"):
        assert key in study.info
    assert study.per_weight and all("metrics" in row for row in study.per_weight)
    assert study.info["recommended"] == study.recommendation["weight"]
    # every completed trial was read back: the share of its reconstructions that show each factor, far above the
    # floor of a decoder that ignores the code for some factor (every run learns x and y)
    done = [t for t in study.summary["trials"] if t["state"] == "COMPLETE"]
    for t in done:
        shown = {k.split(".", 1)[1]: v for k, v in t["metrics"].items() if k.startswith("reconstructed_factors.")}
        assert set(shown) == set(t["readback_floor"]) and shown
        assert all(0 <= v <= 1 for v in shown.values())
        assert any(v > t["readback_floor"][k] + 0.5 for k, v in shown.items())
    header, rows, _ = reference.study_table(study)
    assert "shape shown (%)" in header and "–" not in [row[header.index("shape shown (%)")] for row in rows]


def test_a_copied_reference_evaluated_on_a_subset_keeps_its_shipped_metrics(tmp_path):
    from betavae.metrics import evaluate_run

    shipped = reference.evaluation("dsprites-fast-cpu")
    copied = reference.copy("dsprites-fast-cpu", tmp_path / "mine")
    record = evaluate_run(copied, metrics="mig", params={"mig": {"num_train": 1000}}, readback_images=100)
    # the shipped record names its model, so the copy's is recognised as the same and merged, not set aside
    assert record["model"] == shipped["model"] and [p.name for p in copied.glob("evaluation-*.json")] == []
    assert set(record["kept_metrics"]) == set(shipped["metrics"]) - {"mig"}
    assert record["metrics"]["dci"] == shipped["metrics"]["dci"]
