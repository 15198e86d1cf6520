import math

from betavae.training.diagnostics import diagnose


def _codes(diagnosis):
    return {f["code"] for f in diagnosis["findings"]}


def test_collapse_with_poor_reconstruction_says_beta_too_high():
    record = {"step": 100, "kl": 0.02, "kl_per_dim": [0.01, 0.01], "reconstruction": 740.0}
    d = diagnose(record, weight="β = 16", collapse_threshold=0.1, baseline_reconstruction=741.0, dataset_size=1000)
    assert {"collapsed_dims", "beta_too_high"} <= _codes(d)
    assert d["collapsed_dims"] == [0, 1] and d["active_dims"] == []
    assert "β = 16 may be too high" in next(f["text"] for f in d["findings"] if f["code"] == "beta_too_high")


def test_high_kl_says_beta_too_low():
    record = {"step": 100, "kl": 30.0, "kl_per_dim": [10.0, 10.0, 10.0], "reconstruction": 20.0}
    d = diagnose(record, weight="β = 1", collapse_threshold=0.1, baseline_reconstruction=741.0, dataset_size=1000)
    assert "beta_too_low" in _codes(d) and d["kl_ceiling_log_n"] == math.log(1000)
    assert "beta_too_high" not in _codes(d)


def test_healthy_run_reports_partial_collapse_only():
    record = {"step": 100, "kl": 5.0, "kl_per_dim": [2.5, 2.5, 0.001], "reconstruction": 100.0}
    d = diagnose(record, weight="β = 4", collapse_threshold=0.1, baseline_reconstruction=741.0, dataset_size=737280)
    assert _codes(d) == {"collapsed_dims"}
    assert d["collapsed_dims"] == [2] and d["reconstruction_gain"] > 0.8


def test_an_impossible_total_correlation_estimate_is_reported():
    """The shipped fast-cpu run's last log (docs/recipes.md): TC −4.60 < 0, which no q(z) can have."""
    record = {"step": 20000, "kl": 8.06, "kl_per_dim": [2.7, 2.6, 2.7, 0.01], "reconstruction": 133.0,
              "mutual_information": 12.85, "total_correlation": -4.60, "dimension_wise_kl": -0.20}
    d = diagnose(record, weight="β = 10", collapse_threshold=0.1, baseline_reconstruction=721.0, dataset_size=737280)
    text = next(f["text"] for f in d["findings"] if f["code"] == "tc_estimate_biased")
    assert "total correlation -4.6 nats" in text and "mutual information 12.8" in text and "--tc-memory" in text
    honest = dict(record, total_correlation=0.12, dimension_wise_kl=0.4, mutual_information=7.5)
    assert "tc_estimate_biased" not in _codes(diagnose(honest, "β = 10", 0.1, 721.0, 737280))
    assert "tc_estimate_biased" not in _codes(diagnose(dict(record, total_correlation=-0.2), "β = 10", 0.1, 721.0, 737280))
