"""Random configs and argument lists either run or fail with a one-line error: never a traceback.

Bad values (negative and huge seeds, latents and batch sizes far beyond any memory, output paths
that cannot be made, storage URLs with passwords) must end in ``betavae: error: ...`` and exit code
2 with nothing written; a password must never be shown.
"""

import contextlib
import os
import tempfile
import types
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import betavae
from betavae.cli import main
from betavae.errors import BetaVAEError

NUMBERS = st.one_of(st.integers(-3, 40).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.sampled_from(["abc", "", "1e-3", "0", "-0.5", "nan", "1e9"]))
#: Seeds outside 0 .. 2**63 - 1 (negative, just past the end, far past it) and a few inside it.
BAD_SEEDS = st.one_of(st.integers(-2**80, -1), st.integers(2**63, 2**80), st.sampled_from([2**63, 2**64, -2**63]))
SEEDS = st.one_of(BAD_SEEDS, st.integers(0, 2**63 - 1), st.just(2**63 - 1))
#: Latent and batch sizes no machine can train: a model of terabytes, batches of terabytes.
HUGE_LATENTS = st.one_of(st.integers(10**9, 10**30), st.sampled_from([2**31, 2**63, 2**64 + 1]))
HUGE_BATCHES = st.one_of(st.integers(10**7, 10**30), st.sampled_from([2**31, 2**63, 2**64 + 1]))
FLAG_VALUES = {
    "--beta": NUMBERS, "--latents": st.one_of(NUMBERS, HUGE_LATENTS.map(str)), "--lr": NUMBERS,
    "--batch-size": st.one_of(NUMBERS, HUGE_BATCHES.map(str)),
    "--log-every": NUMBERS, "--checkpoint-every": NUMBERS, "--seed": st.one_of(NUMBERS, SEEDS.map(str)),
    "--likelihood-scale": NUMBERS,
    "--keep-checkpoints": NUMBERS, "--skip-nonfinite": NUMBERS, "--collapse-threshold": NUMBERS,
    "--arch": st.sampled_from(["burgess", "locatello", "mlp", "vgg", ""]),
    "--likelihood": st.sampled_from(["bernoulli", "gaussian", "laplace", "poisson"]),
    "--device": st.sampled_from(["auto", "cpu", "cuda", "cuda:3", "gpu", "cuda:99999999999999999999", "cuda:²"]),
    "--steps": st.sampled_from(["1", "2", "0", "-4", "x"]),
}
ARGUMENTS = st.lists(st.sampled_from(sorted(FLAG_VALUES)), max_size=5, unique=True).flatmap(
    lambda flags: st.tuples(*[st.tuples(st.just(f), FLAG_VALUES[f]) for f in flags]))


def _run(argv, capsys):
    """``main(argv)``'s exit code and everything it printed; an exception escaping it fails the test."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects a malformed value before anything runs
        code = exc.code
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output, output
    return code, captured.err


def _assert_one_line_error(code, err):
    assert code == 2, err
    assert "Traceback" not in err
    if "betavae: error:" in err:  # ours: one line; argparse's: usage, then its one line
        assert err.strip().splitlines()[-1].startswith("betavae: error:") and err.count("betavae: error:") == 1
    else:
        assert "error: argument" in err, err


def _listing(root: Path) -> set[bytes]:
    """Every path below ``root`` (as bytes: names need not be UTF-8)."""
    found = set()
    for folder, dirs, files in os.walk(os.fsencode(root)):
        found.update(os.path.join(folder, name) for name in dirs + files)
    return found


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=ARGUMENTS)
def test_random_cli_arguments_run_or_fail_cleanly(pairs, small_npy, capsys):
    args = [f"{flag}={value}" for flag, value in pairs]  # the = form: a value may start with '-'
    if "--steps" not in dict(pairs):
        args += ["--steps=2"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code, err = _run(["train", "--data", str(small_npy), "--out", str(out), "--no-figures", *args], capsys)
        assert code in (0, 2), err
        if code == 2:  # a bad value, or training that failed (a NaN loss with a huge --lr keeps its run)
            _assert_one_line_error(code, err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=st.sampled_from(sorted(FLAG_VALUES)).flatmap(lambda f: st.tuples(st.just(f), FLAG_VALUES[f])))
def test_one_flag_at_a_time_runs_or_fails_cleanly(pair, small_npy, capsys):
    flag, value = pair
    steps = [] if flag == "--steps" else ["--steps=2"]
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--data", str(small_npy), "--out", str(Path(tmp) / "run"), "--no-figures", "--batch-size=16",
                "--latents=3", *steps, f"{flag}={value}"]
        code, err = _run(argv, capsys)
        assert code in (0, 2), err
        if code == 2:
            _assert_one_line_error(code, err)


#: Sweep flags with values in and out of range. Every sweep below names an unreachable study storage,
#: so a sweep whose values all pass ends there, with exit code 2 and nothing written.
SWEEP_VALUES = {
    "--workers": st.one_of(NUMBERS, st.integers(1025, 10**20).map(str)),
    "--parallel": st.one_of(NUMBERS, st.integers(2, 10**20).map(str)),
    "--heartbeat": st.one_of(NUMBERS, st.integers(86_401, 10**20).map(str)),
    "--tolerance": NUMBERS, "--eval-samples": NUMBERS, "--udr-samples": NUMBERS,
    "--eval-seed": st.one_of(NUMBERS, SEEDS.map(str)),
    "--seeds": st.one_of(NUMBERS, st.lists(SEEDS, min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
                         st.integers(10_001, 10**20).map(str)),
    "--beta": st.one_of(NUMBERS, st.lists(NUMBERS, min_size=1, max_size=3).map(",".join)),
    "--metric": st.sampled_from(["udr", "mig", "dci.disentanglement", "nope", "", "mig.x"]),
    "--metrics": st.sampled_from(["all", "mig", "unsupervised", "nope", ",", ""]),
    "--objective": st.sampled_from(["beta", "tc", "capacity", "factor", "nope"]),
    "--latents": st.one_of(NUMBERS, HUGE_LATENTS.map(str)), "--batch-size": st.one_of(NUMBERS, HUGE_BATCHES.map(str)),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.sampled_from(sorted(SWEEP_VALUES)), min_size=1, max_size=4, unique=True).flatmap(
    lambda flags: st.tuples(*[st.tuples(st.just(f), SWEEP_VALUES[f]) for f in flags])))
def test_random_sweep_arguments_fail_cleanly_before_anything_is_written(pairs, small_npy, tmp_path, capsys,
                                                                         monkeypatch):
    import time

    from betavae.sweep import study

    monkeypatch.setattr(study, "time", types.SimpleNamespace(sleep=lambda s: None, monotonic=time.monotonic))
    given = dict(pairs)
    args = [f"{flag}={value}" for flag, value in pairs]
    if "--beta" not in given:
        args += ["--weights=1,4" if given.get("--objective", "beta") not in ("beta", "tc") else "--beta=1,4"]
    out = tmp_path / "sweep"
    code, err = _run(["sweep", "--data", str(small_npy), "--steps=1", "--out", str(out), *args,
                      "--storage", "postgresql://nobody:Pw-Zx9-secret@127.0.0.1:1/nowhere"], capsys)
    _assert_one_line_error(code, err)
    assert "Pw-Zx9-secret" not in err
    assert not out.exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(latents=st.one_of(st.none(), HUGE_LATENTS), batch=st.one_of(st.none(), HUGE_BATCHES),
       arch=st.sampled_from(["burgess", "locatello", "mlp"]),
       dataset=st.sampled_from([None, "dsprites", "color-dsprites"]))
def test_models_and_batches_beyond_any_memory_are_refused(latents, batch, arch, dataset, small_npy, tmp_path, capsys):
    if latents is None and batch is None:
        latents = 10**9
    data = ["--dataset", dataset] if dataset else ["--data", str(small_npy)]
    sizes = (["--latents", str(latents)] if latents is not None else []) + (
        ["--batch-size", str(batch)] if batch is not None else [])
    out = tmp_path / "run"
    argv = ["train", *data, "--arch", arch, *sizes, "--steps", "1", "--out", str(out), "--no-figures"]
    code, err = _run(argv, capsys)
    _assert_one_line_error(code, err)
    assert "memory" in err or "far beyond" in err or "exceeds the" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_images):
    """A finished tiny run with factor-free data: evaluate, traverse and report accept it."""
    import numpy as np

    root = tmp_path_factory.mktemp("fuzz-run")
    np.save(root / "small.npy", small_images[:64])
    return betavae.train(betavae.TrainConfig(data=str(root / "small.npy"), steps=2, batch_size=16, latents=3,
                                             arch="mlp", out=str(root / "run"), figures=False, device="cpu"))


def _snapshot(run_dir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*")}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["evaluate", "traverse", "report"]), seed=BAD_SEEDS)
def test_bad_seeds_of_run_commands_are_refused_before_writing(command, seed, trained_run, capsys):
    before = _snapshot(trained_run)
    code, err = _run([command, str(trained_run), f"--seed={seed}"], capsys)
    _assert_one_line_error(code, err)
    assert "seed must be a whole number from 0 to 2**63 - 1" in err
    assert _snapshot(trained_run) == before


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seeds=st.lists(BAD_SEEDS, min_size=1, max_size=3), eval_seed=st.booleans())
def test_bad_sweep_seeds_are_refused(seeds, eval_seed, small_npy, tmp_path, capsys):
    seed_args = ["--seeds", "0,1", f"--eval-seed={seeds[0]}"] if eval_seed else [f"--seeds={','.join(map(str, seeds))}"]
    out = tmp_path / "sweep"
    code, err = _run(["sweep", "--data", str(small_npy), "--beta", "1,4", *seed_args, "--out", str(out)], capsys)
    _assert_one_line_error(code, err)
    assert "seed must be a whole number" in err or "--seeds N trains N seeds" in err  # one value: a count
    assert not out.exists()


NAME_PART = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=12)
#: Bytes that are no UTF-8 (0xfe and 0xff never occur in it) around other bytes, as a file name may hold them.
NOT_UTF8 = st.tuples(st.binary(max_size=4), st.sampled_from([b"\xff", b"\xfe"]), st.binary(max_size=4)).map(
    lambda t: b"".join(t).replace(b"/", b"_").replace(b"\x00", b"_"))


#: How a bad output path is made below a folder holding a regular file ``f``: (kind, path parts).
BAD_OUTS = st.one_of(
    st.lists(NAME_PART, min_size=1, max_size=3).map(lambda parts: ("below a file", ["f", *parts])),
    st.integers(256, 400).map(lambda n: ("long name", ["x" * n])),
    st.integers(128, 200).map(lambda n: ("long name", ["runs", "é" * n])),  # 2 bytes a character
    st.tuples(NAME_PART, NOT_UTF8).map(lambda t: ("not UTF-8", [t[0] + os.fsdecode(t[1])])),
    NAME_PART.map(lambda s: ("NUL", [s + "\x00x"])),
    st.integers(256, 300).map(lambda n: ("below a file", ["f", "y" * n])),
)
OUT_COMMANDS = {
    "train": lambda data, out: ["train", "--data", data, "--steps", "1", "--no-figures", "--out", out],
    "demo": lambda data, out: ["demo", "--steps", "1", "--out", out],
    "sweep": lambda data, out: ["sweep", "--data", data, "--beta", "1", "--seeds", "1", "--steps", "1", "--out", out],
    "reference": lambda data, out: ["reference", "--copy", betavae.reference.DEMO_REFERENCE, out],
}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=BAD_OUTS, command=st.sampled_from(sorted(OUT_COMMANDS)))
def test_output_paths_that_cannot_be_made_are_refused_before_anything_is_made(bad, command, small_npy, capsys):
    kind, parts = bad
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "f").write_text("a regular file")
        before = _listing(Path(tmp))
        out = os.path.join(tmp, *parts)
        code, err = _run(OUT_COMMANDS[command](str(small_npy), out), capsys)
        _assert_one_line_error(code, err)
        assert _listing(Path(tmp)) == before, f"{kind}: something was made"


READ_COMMANDS = {
    "evaluate": lambda data, path: ["evaluate", path],
    "traverse": lambda data, path: ["traverse", path],
    "report": lambda data, path: ["report", path],
    "resume": lambda data, path: ["train", "--resume", path],
    "data": lambda data, path: ["train", "--data", path, "--steps", "1"],
    "factors": lambda data, path: ["train", "--data", data, "--factors", path + ".csv", "--steps", "1"],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=BAD_OUTS, command=st.sampled_from(sorted(READ_COMMANDS)))
def test_paths_to_read_that_cannot_be_looked_up_fail_cleanly(bad, command, small_npy, capsys, monkeypatch):
    kind, parts = bad
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.chdir(tmp)  # a train command that gets past the paths would make its run in here
        (Path(tmp) / "f").write_text("a regular file")
        before = _listing(Path(tmp))
        code, err = _run(READ_COMMANDS[command](str(small_npy), os.path.join(tmp, *parts)), capsys)
        _assert_one_line_error(code, err)
        assert _listing(Path(tmp)) == before, f"{kind}: something was made"


MARK = "Zx9"  # only in generated passwords
PASSWORDS = st.builds(lambda a, b: a + MARK + b, st.text(max_size=8), st.text(max_size=8)).filter(
    lambda pw: "\x00" not in pw)
STORAGE_FORMS = [
    lambda pw, q: f"mysql://alice:{pw}@127.0.0.1:1/db",
    lambda pw, q: f"postgresql://alice:{q}@127.0.0.1:1/db",
    lambda pw, q: f"postgresql://alice:{pw}@127.0.0.1:1/db",
    lambda pw, q: f"postgresql://alice@127.0.0.1:1/db?password={q}",
    lambda pw, q: f"postgresql://alice@127.0.0.1:1/db?sslmode=disable&sslpassword={q}",
    lambda pw, q: f"postgresql+psycopg2://alice:{q}@127.0.0.1:1/db",
    lambda pw, q: f"postgresql://alice:{q}@127.0.0.1:port/db",
    lambda pw, q: f"sqlite://alice:{q}@",
    lambda pw, q: f"redis://:{pw}@127.0.0.1:1/0",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=PASSWORDS, form=st.sampled_from(range(len(STORAGE_FORMS))))
def test_storage_urls_with_passwords_fail_cleanly_and_never_show_the_password(password, form, small_npy, tmp_path,
                                                                               capsys, monkeypatch):
    import time

    from betavae.sweep import study

    monkeypatch.setattr(study, "time", types.SimpleNamespace(sleep=lambda s: None, monotonic=time.monotonic))
    url = STORAGE_FORMS[form](password, quote(password, safe=""))
    out = tmp_path / "sweep"
    try:
        code = main(["sweep", "--data", str(small_npy), "--beta", "1", "--seeds", "1", "--steps", "1",
                     "--out", str(out), "--storage", url])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    _assert_one_line_error(code, captured.err)
    for shown in (password, quote(password, safe="")):
        assert shown not in captured.out + captured.err
    assert not out.exists()


CONFIG_VALUES = st.fixed_dictionaries({}, optional={
    "beta": st.one_of(st.floats(allow_nan=True), st.integers(-2, 5), st.text(max_size=2), st.none()),
    "latents": st.one_of(st.integers(-2, 20), st.floats(0, 5), st.text(max_size=2), st.booleans(), HUGE_LATENTS),
    "lr": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 1)),
    "batch_size": st.one_of(st.integers(-1, 600), st.none(), HUGE_BATCHES),
    "arch": st.one_of(st.sampled_from(["burgess", "mlp", "nope"]), st.integers()),
    "seed": st.one_of(SEEDS, st.booleans(), st.floats(0, 3)),
    "overwrite": st.one_of(st.booleans(), st.integers(0, 1)),
    "device": st.sampled_from(["cpu", "cuda:9", "auto", "tpu"]),
    "out": st.one_of(st.none(), st.integers(), st.just("f/run"), st.just("x" * 300), st.just("bad\udcff")),
})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=CONFIG_VALUES)
def test_random_python_configs_run_or_raise_a_betavae_error(values, small_npy):
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # out=None trains in runs/ of the cwd
        (Path(tmp) / "f").write_text("a regular file")
        if isinstance(values.get("out"), str):
            values["out"] = str(Path(tmp) / values["out"])
        values = {"out": str(Path(tmp) / "run"), **values}
        try:
            config = betavae.TrainConfig(data=str(small_npy), steps=1, figures=False, **values)
            betavae.train(config)
        except BetaVAEError as exc:
            assert str(exc) and "\n" not in str(exc)
        except Exception as exc:  # pragma: no cover - the failure message names what escaped
            pytest.fail(f"{type(exc).__name__} escaped for {values}: {exc}")
