import json
import shutil

import pytest

from betavae.cli import main
from betavae.objectives import OBJECTIVES
from betavae.report import run_report
from betavae.report.html import fmt_number
from betavae.report.run_report import MAIN_CURVE_KEYS, SHARED_TERMS
from betavae.training.logging import read_metrics

COMMON = ["config", "diagnosis", "curves", "kl", "reconstructions", "samples", "traversals", "metrics"]
FACTOR_SECTIONS = ["mutual-information", "latent-factor"]
COMMON_FIGURES = {
    "curves": ["training_curves", "elbo_curves"],
    "kl": ["kl_bars"],
    "reconstructions": ["reconstructions"],
    "samples": ["samples"],
    "traversals": ["traversals_gif", "traversals_grid"],
}


def _own_terms(run):
    last = read_metrics(run)[-1]
    return [k for k, v in last.items() if isinstance(v, (int, float)) and k not in MAIN_CURVE_KEYS + SHARED_TERMS]


def _check_common(page, run):
    assert page.external == []  # self-contained: nothing loads from elsewhere
    records = read_metrics(run)
    varying = [k for k in _own_terms(run) if len({r[k] for r in records}) > 1]  # plotted; constant ones in words
    for section, figures in COMMON_FIGURES.items():
        expected = figures + (["objective_terms"] if section == "curves" and varying else [])
        assert page.figures(section) == expected, section
    diagnosis = json.loads((run / "diagnosis.json").read_text())
    for finding in diagnosis["findings"]:
        assert finding["text"] in page.text["diagnosis"]
    assert "Over the whole run" in page.text["diagnosis"]
    for episode in diagnosis["episodes"]:  # what happened over the run, beside the last step
        assert episode["text"] in page.text["diagnosis"]
    for term in _own_terms(run):  # every objective-specific key of metrics.jsonl is named
        assert term in page.text["curves"]
    config = json.loads((run / "config.json").read_text())
    assert f"{config['steps']:,} steps of {config['batch_size']} images" in page.text["config"]


def test_beta_run_with_factors_has_every_section_and_the_evaluation(beta_run, parse_page):
    from betavae.metrics import evaluate_run

    record = evaluate_run(beta_run, metrics="mig", params={"mig": {"num_train": 400}})
    path = run_report(beta_run, mi_images=600)
    assert path == beta_run / "report.html"
    page = parse_page(path)
    assert page.sections == COMMON + FACTOR_SECTIONS
    _check_common(page, beta_run)
    assert page.figures("mutual-information") == ["mutual_information"]
    assert page.figures("latent-factor") == ["latent_vs_factor"]
    assert "600 images" in page.text["mutual-information"]
    assert "Constant through the run: beta = 4." in page.text["curves"]  # a constant β schedule, in words
    assert "No evaluation yet" not in page.text["metrics"]
    for entry in record["metrics"].values():
        for measure, value in entry["values"].items():
            assert measure in page.text["metrics"] and fmt_number(float(value)) in page.text["metrics"]
    (beta_run / "evaluation.json").unlink()  # the session's other tests see the run as trained


@pytest.mark.skipif("factor" not in OBJECTIVES, reason="no FactorVAE objective in this betavae")
def test_factor_objective_report_shows_its_own_terms(tmp_path, labelled_npz, train_tiny, parse_page):
    run = train_tiny(tmp_path / "factor", labelled_npz, objective="factor")
    page = parse_page(run_report(run, mi_images=600))
    assert page.sections == COMMON + FACTOR_SECTIONS
    _check_common(page, run)
    assert {"total_correlation", "discriminator_loss"} <= set(_own_terms(run))
    assert page.figures("curves")[-1] == "objective_terms"
    assert "--objective factor" in page.text["config"]


def test_learning_rate_is_described_in_the_setup_not_as_an_objective_term(tmp_path, small_images, train_tiny,
                                                                         parse_page):
    import numpy as np

    data = tmp_path / "plain.npy"
    np.save(data, small_images)
    run = train_tiny(tmp_path / "cosine", data, lr_schedule="cosine")
    records = read_metrics(run)
    assert len({r["lr"] for r in records}) > 1  # the logged rate decays ...
    page = parse_page(run_report(run, mi_images=600))
    assert "learning rate 0.001 with cosine decay to 0" in page.text["config"]  # ... and is said once, in words
    assert page.figures("curves") == ["training_curves", "elbo_curves"]  # not plotted as a term of the objective
    assert "lr" not in _own_terms(run)


def test_run_without_factors_gets_its_report_from_training(plain_run, parse_page):
    page = parse_page(plain_run / "report.html")  # written by the training loop (figures on)
    assert page.sections == COMMON
    _check_common(page, plain_run)
    assert "no factor labels" in page.text["metrics"] and "No evaluation yet" in page.text["metrics"]


def test_unfinished_run_still_gets_a_report_saying_what_is_missing(plain_run, tmp_path, parse_page):
    run = tmp_path / "unfinished"
    shutil.copytree(plain_run, run)
    for name in ("model.safetensors", "diagnosis.json", "report.html"):
        (run / name).unlink()
    shutil.rmtree(run / "figures")
    page = parse_page(run_report(run))
    assert page.sections == COMMON
    assert "No diagnosis yet" in page.text["diagnosis"]
    assert "cannot be loaded" in page.text["samples"] and page.figures("samples") == []
    assert page.figures("curves")[0] == "training_curves"  # drawn from metrics.jsonl alone


def test_cli_report(plain_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(plain_run, run)
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and str(run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
