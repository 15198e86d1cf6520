"""What a sweep knows of objectives and metrics comes from their classes."""

from dataclasses import fields

from betavae.metrics import METRIC_TYPES
from betavae.objectives import OBJECTIVES
from betavae.sweep.spec import WEIGHT_FIELDS, SweepSpec, metric_key
from betavae.training.config import TrainConfig


def test_every_objective_names_a_config_field_and_symbol():
    names = {f.name for f in fields(TrainConfig)}
    for name, cls in OBJECTIVES.items():
        assert cls.weight_field in names, name
        assert cls.weight_symbol, name
    assert WEIGHT_FIELDS == {"beta": "beta", "tc": "beta", "capacity": "capacity_max", "factor": "factor_gamma",
                             "dip1": "dip_lambda_od", "dip2": "dip_lambda_od"}


def test_weight_symbols():
    symbols = {o: SweepSpec(out="x", weights=[1.0], seeds=[0], base={"objective": o}).weight_symbol for o in OBJECTIVES}
    assert symbols == {"beta": "β", "tc": "β", "capacity": "C_max", "factor": "γ", "dip1": "λ_od", "dip2": "λ_od"}


def test_metric_keys_from_the_metric_classes():
    assert {m: metric_key(m) for m in METRIC_TYPES} == {
        "beta_vae_score": "beta_vae_score.eval_accuracy", "factor_vae_score": "factor_vae_score.eval_accuracy",
        "mig": "mig.mig", "sap": "sap.sap", "dci": "dci.disentanglement",
        "modularity_explicitness": "modularity_explicitness.modularity",
        "unsupervised": "unsupervised.gaussian_total_correlation"}
    assert metric_key("udr") == "udr" and metric_key("dci.completeness") == "dci.completeness"
