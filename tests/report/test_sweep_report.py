import base64

import numpy as np
import pytest
from PIL import Image

from betavae.errors import ConfigError
from betavae.report import sweep_report


def _run_dir(root, name, shade):
    """A tiny run directory holding only figures/traversals.png (a flat grey image)."""
    figures = root / name / "figures"
    figures.mkdir(parents=True)
    Image.fromarray(np.full((60, 90), shade, dtype=np.uint8)).save(figures / "traversals.png")
    return root / name


@pytest.fixture
def sweep_dir(tmp_path):
    """A sweep directory holding the trade-off figure ``betavae sweep`` draws (a flat grey image here)."""
    out = tmp_path / "sweep"
    out.mkdir()
    Image.fromarray(np.full((40, 80), 200, dtype=np.uint8)).save(out / "tradeoff.png")
    return out


def test_sweep_of_betas_with_flat_measures(sweep_dir, parse_page):
    trials = []
    for i, (beta, seed) in enumerate([(1, 0), (1, 1), (4, 0), (4, 1), (16, 0)]):
        run = _run_dir(sweep_dir / "trials", f"beta{beta}-seed{seed}", 40 * i)
        trials.append({"beta": beta, "seed": seed, "run_dir": str(run), "reconstruction": 30.0 + beta + seed,
                       "mig": 0.1 * beta ** 0.5 + 0.01 * seed})
    trials[-1]["run_dir"] = str(sweep_dir / "trials" / "never-trained")  # a trial whose figures are missing
    recommendation = {"beta": 4, "metric": "mig", "reason": "β = 4 has the best MIG among the betas within 10% of "
                                                            "the best reconstruction.", "tolerance": 0.1}
    path = sweep_report(sweep_dir, trials, recommendation)
    assert path == sweep_dir / "report.html"
    page = parse_page(path)
    assert page.sections == ["recommendation", "tradeoff", "trials", "traversals"]
    assert page.external == []
    assert "Recommended β = 4" in page.text["recommendation"] and recommendation["reason"] in page.text["recommendation"]
    assert page.figures("tradeoff") == ["tradeoff"]
    assert page.figures("traversals") == ["traversal_thumbnail"] * 4  # one per trial with a traversals.png
    assert "seed 0, mig 0.4: no traversals.png" in page.text["traversals"]
    assert "β = 4 (recommended)" in page.text["traversals"]
    html = path.read_text()
    assert html.count('<tr class="highlight">') == 2  # both seeds of β = 4
    for t in trials:
        assert f"{t['reconstruction']:.4g}" in page.text["trials"]
    assert "trials/beta4-seed1" in page.text["trials"]  # run dirs shown relative to the sweep


def test_sweep_records_with_nested_metrics_and_failed_trials(sweep_dir, parse_page):
    run = _run_dir(sweep_dir / "trials", "a", 100)
    trials = [
        {"weight": 2.0, "seed": 0, "state": "COMPLETE", "run_dir": str(run), "reconstruction": 41.5, "kl": 9.0,
         "kl_per_dim": [3.0, 6.0, 0.01], "metrics": {"udr": 0.31, "mig.mig": 0.12}},
        {"weight": 8.0, "seed": 0, "state": "FAIL", "error": "TrainingError: NaN", "metrics": {}},
    ]
    recommendation = {"weight": 2.0, "weight_name": "γ", "metric": "udr", "reason": "only γ = 2 finished.",
                      "higher_is_better": True, "objective": "factor",
                      "per_weight": [{"weight": 2.0, "completed": 1, "failed": 0, "reconstruction": {"mean": 41.5, "std": 0.0},
                                      "metric": {"mean": 0.31, "std": 0.0}},
                                     {"weight": 8.0, "completed": 0, "failed": 1, "reconstruction": {"mean": float("nan")}}]}
    page = parse_page(sweep_report(sweep_dir, trials, recommendation))
    assert "Recommended γ = 2" in page.text["recommendation"]
    assert "0.31 ± 0" in page.text["recommendation"]  # the per-weight table
    assert page.figures("tradeoff") == ["tradeoff"]
    assert "udr" in page.text["trials"] and "mig.mig" in page.text["trials"] and "TrainingError: NaN" in page.text["trials"]
    assert "3 6 0.01" in page.text["trials"]  # kl_per_dim, compact
    assert page.figures("traversals") == ["traversal_thumbnail"]
    assert "(FAIL): no traversals.png" in page.text["traversals"]


def test_no_recommendation_and_no_measure_still_make_a_page(sweep_dir, parse_page):
    trials = [{"beta": 1.0, "seed": 0, "state": "FAIL"}]
    page = parse_page(sweep_report(sweep_dir, trials, {"weight": None, "reason": "every trial failed."}))
    assert "No β could be recommended. every trial failed." in page.text["recommendation"]
    assert "no trade-off to draw" in page.text["tradeoff"] and page.figures("tradeoff") == []


def test_the_tradeoff_section_embeds_the_sweeps_own_figure(sweep_dir, parse_page):
    trials = [{"beta": 1.0, "seed": 0, "reconstruction": 30.0, "mig": 0.2}]
    recommendation = {"beta": 1.0, "metric": "mig", "reason": "only β = 1."}
    html = sweep_report(sweep_dir, trials, recommendation).read_text()
    figure = base64.b64encode((sweep_dir / "tradeoff.png").read_bytes()).decode()
    assert html.count(figure) == 1  # the file itself, not a second drawing of the same data
    (sweep_dir / "tradeoff.png").unlink()
    page = parse_page(sweep_report(sweep_dir, trials, recommendation))
    assert page.figures("tradeoff") == []
    assert "No tradeoff.png in this sweep directory" in page.text["tradeoff"]


def test_bad_input_is_refused(sweep_dir, tmp_path):
    with pytest.raises(ConfigError, match="numeric 'weight'"):
        sweep_report(sweep_dir, [{"seed": 0}], {})
    with pytest.raises(ConfigError, match="does not exist"):
        sweep_report(tmp_path / "nowhere", [], {})
