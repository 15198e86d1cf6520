"""Random configs and argument lists either run or fail with a one-line error: never a traceback."""

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import betavae
from betavae.cli import main
from betavae.errors import BetaVAEError

NUMBERS = st.one_of(st.integers(-3, 40).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.sampled_from(["abc", "", "1e-3", "0", "-0.5", "nan", "1e9"]))
FLAG_VALUES = {
    "--beta": NUMBERS, "--latents": NUMBERS, "--lr": NUMBERS, "--batch-size": NUMBERS,
    "--log-every": NUMBERS, "--checkpoint-every": NUMBERS, "--seed": NUMBERS, "--likelihood-scale": NUMBERS,
    "--keep-checkpoints": NUMBERS, "--skip-nonfinite": NUMBERS, "--collapse-threshold": NUMBERS,
    "--arch": st.sampled_from(["burgess", "locatello", "mlp", "vgg", ""]),
    "--likelihood": st.sampled_from(["bernoulli", "gaussian", "laplace", "poisson"]),
    "--device": st.sampled_from(["auto", "cpu", "cuda", "cuda:3", "gpu"]),
    "--steps": st.sampled_from(["1", "2", "0", "-4", "x"]),
}
ARGUMENTS = st.lists(st.sampled_from(sorted(FLAG_VALUES)), max_size=5, unique=True).flatmap(
    lambda flags: st.tuples(*[st.tuples(st.just(f), FLAG_VALUES[f]) for f in flags]))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=ARGUMENTS)
def test_random_cli_arguments_run_or_fail_cleanly(pairs, small_npy, capsys):
    args = [item for pair in pairs for item in pair]
    if "--steps" not in args:
        args += ["--steps", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--data", str(small_npy), "--out", str(Path(tmp) / "run"), "--no-figures", *args]
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse rejects a malformed value before anything runs
            code = exc.code
        err = capsys.readouterr().err
        assert code in (0, 2), err
        assert "Traceback" not in err
        if code == 2 and "betavae: error:" in err:
            assert err.strip().count("\n") == 0 or err.strip().splitlines()[-1].startswith("betavae: error:")


CONFIG_VALUES = st.fixed_dictionaries({}, optional={
    "beta": st.one_of(st.floats(allow_nan=True), st.integers(-2, 5), st.text(max_size=2), st.none()),
    "latents": st.one_of(st.integers(-2, 20), st.floats(0, 5), st.text(max_size=2), st.booleans()),
    "lr": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 1)),
    "batch_size": st.one_of(st.integers(-1, 600), st.none()),
    "arch": st.one_of(st.sampled_from(["burgess", "mlp", "nope"]), st.integers()),
    "overwrite": st.one_of(st.booleans(), st.integers(0, 1)),
    "device": st.sampled_from(["cpu", "cuda:9", "auto", "tpu"]),
    "out": st.one_of(st.none(), st.integers()),
})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=CONFIG_VALUES)
def test_random_python_configs_run_or_raise_a_betavae_error(values, small_npy):
    with tempfile.TemporaryDirectory() as tmp:
        values = {"out": str(Path(tmp) / "run"), **values}
        try:
            config = betavae.TrainConfig(data=str(small_npy), steps=1, figures=False, **values)
            betavae.train(config)
        except BetaVAEError as exc:
            assert str(exc) and "\n" not in str(exc)
        except Exception as exc:  # pragma: no cover - the failure message names what escaped
            pytest.fail(f"{type(exc).__name__} escaped for {values}: {exc}")
