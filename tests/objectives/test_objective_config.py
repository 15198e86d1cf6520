"""The objectives' settings in TrainConfig: flags, defaults and one-line refusals of bad values."""

import pytest

from betavae.cli import main
from betavae.training.config import TrainConfig


def test_every_objective_setting_has_a_flag_with_its_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--objective", "--beta-schedule", "--beta-warmup-steps", "--beta-cycles", "--beta-cycle-ratio",
                 "--capacity-gamma", "--capacity-max", "--capacity-steps", "--factor-gamma", "--discriminator-lr",
                 "--tc-alpha", "--tc-gamma", "--estimator", "--dip-lambda-od", "--dip-lambda-d"):
        assert flag in text


def test_published_defaults():
    c = TrainConfig()
    assert (c.capacity_gamma, c.capacity_max, c.capacity_steps) == (1000.0, 25.0, 100_000)  # Burgess et al.
    assert (c.discriminator_lr, c.tc_alpha, c.tc_gamma) == (1e-4, 1.0, 1.0)
    assert c.beta_schedule == "constant" and (c.beta_cycles, c.beta_cycle_ratio) == (4, 0.5)  # Fu et al.
    assert c.dip_lambda_d is None  # 10·λ_od for dip1, λ_od for dip2


@pytest.mark.parametrize("args,message", [
    (["--objective", "tc", "--batch-size", "1"], "objective tc estimates batch statistics and needs --batch-size of at least 2"),
    (["--objective", "factor", "--batch-size", "1"], "needs --batch-size of at least 2"),
    (["--objective", "capacity", "--beta-schedule", "linear"], "--beta-schedule applies to --objective beta only"),
    (["--beta-schedule", "cyclical", "--beta-cycles", "5"], "beta_cycles (5) exceeds steps (1)"),
    (["--beta-cycle-ratio", "0"], "beta_cycle_ratio must be in (0, 1]"),
    (["--beta-cycle-ratio", "1.5"], "beta_cycle_ratio must be in (0, 1]"),
    (["--beta-warmup-steps", "0"], "beta_warmup_steps must be a whole number >= 1"),
    (["--capacity-steps", "0"], "capacity_steps must be a whole number >= 1"),
    (["--capacity-max", "-1"], "capacity_max must be a finite number >= 0"),
    (["--capacity-gamma", "nan"], "capacity_gamma must be a finite number >= 0"),
    (["--factor-gamma", "-2"], "factor_gamma must be a finite number >= 0"),
    (["--discriminator-lr", "0"], "discriminator_lr must be a finite number > 0"),
    (["--tc-alpha", "-1"], "tc_alpha must be a finite number >= 0"),
    (["--dip-lambda-d", "-1"], "dip_lambda_d must be a finite number >= 0"),
])
def test_bad_objective_settings_get_one_line_and_exit_code_2(args, message, small_npy, tmp_path, capsys):
    code = main(["train", "--data", str(small_npy), *args, "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("betavae: error:")
    assert not (tmp_path / "run").exists()


def test_unknown_estimator_or_schedule_is_an_argument_error(capsys):
    for args in (["--estimator", "iwae"], ["--beta-schedule", "cosine"]):
        with pytest.raises(SystemExit) as exc:
            main(["train", *args])
        assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
