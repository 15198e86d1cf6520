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
