"""A tiny sweep end to end on the default SQLite study, run twice; and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest

from betavae.cli import main
from tests.sweep.conftest import tiny_args


def _study(out):
    return optuna.load_study(study_name=f"betavae-sweep-{out.name}", storage=f"sqlite:///{out / 'study.db'}")


def test_sweep_writes_outputs_and_rerun_repeats_nothing(toy_npz, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(tiny_args(toy_npz, out)) == 0
    err = capsys.readouterr().err
    assert "recommended β = " in err and "4/4 done" not in err.split("starting")[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "mig.mig"  # labelled data: MIG by default
    assert sorted((t["weight"], t["seed"]) for t in summary["trials"]) == [(1, 0), (1, 1), (4, 0), (4, 1)]
    for t in summary["trials"]:
        assert t["state"] == "COMPLETE"
        assert len(t["kl_per_dim"]) == 3 and 0 <= t["active_dims"] <= 3
        assert t["reconstruction"] > 0 and "mig.mig" in t["metrics"] and "udr" in t["metrics"]
        # the largest angle of a pair of factors in the trial's evaluation, beside its MIG
        angles = [p["angle"] for p in json.loads((Path(t["run_dir"]) / "evaluation.json").read_text())["factor_pairs"]]
        assert t["turn_degrees"] == (max(angles) if angles else None)
        # the share of reconstructions that show each factor, and the floor, as its evaluation.json has them
        readback = json.loads((Path(t["run_dir"]) / "evaluation.json").read_text())["reconstructed_factors"]
        assert {f"reconstructed_factors.{r['factor']}": r["accuracy"] for r in readback} == {
            k: v for k, v in t["metrics"].items() if k.startswith("reconstructed_factors.")}
        assert t["readback_floor"] == {r["factor"]: r["floor"] for r in readback} and len(readback) == 3
    assert [row["weight"] for row in summary["per_weight"]] == [1, 4]
    assert all(row["reconstruction"]["n"] == 2 for row in summary["per_weight"])
    assert all({"mig.mig", "udr"} <= set(row["metrics"]) for row in summary["per_weight"])  # every metric's spread
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4 and {"reconstruction_nll", "kl", "active_dims", "turn_degrees", "mig.mig", "udr"} <= set(rows[0])
    recommendation = json.loads((out / "recommendation.json").read_text())
    assert recommendation["weight"] in (1, 4) and recommendation["metric"] == "mig.mig" and recommendation["reason"]
    assert (out / "tradeoff.png").stat().st_size > 10_000
    assert sorted(p.name for p in (out / "trials").iterdir()) == [
        "beta-beta1-seed0", "beta-beta1-seed1", "beta-beta4-seed0", "beta-beta4-seed1"]

    trained = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/model.safetensors")}
    assert main(tiny_args(toy_npz, out)) == 0  # the same command again: everything is done
    assert "starting" not in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/model.safetensors")} == trained
    trials = _study(out).get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert json.loads((out / "recommendation.json").read_text())["weight"] == recommendation["weight"]


def test_changed_settings_need_another_study(toy_npz, tmp_path):
    from betavae.errors import ConfigError
    from betavae.sweep import SweepSpec
    from betavae.sweep.study import open_study

    base = {"data": str(toy_npz), "arch": "mlp", "latents": 3, "batch_size": 16, "steps": 4}
    spec = SweepSpec(out=str(tmp_path / "s"), weights=[1.0, 4.0], seeds=[0, 1], base=base, metric="mig").validate()
    (tmp_path / "s").mkdir()
    study = open_study(spec)
    assert sorted(t.system_attrs["fixed_params"]["weight"] for t in study.get_trials()) == [1, 1, 4, 4]
    open_study(spec)  # joining with the same settings adds nothing
    assert len(study.get_trials()) == 4
    changed = SweepSpec(out=spec.out, weights=[1.0, 4.0], seeds=[0, 1], base={**base, "lr": 0.01}, metric="mig")
    with pytest.raises(ConfigError, match=r"started with other settings \(base\.lr: unset -> 0\.01\)"):
        open_study(changed.validate())


def test_workers_claiming_at_once_never_take_the_same_trial(tmp_path):
    # three workers' handles on one SQLite study, claiming together from the same instant: without the
    # write lock taken before the read, about a third of the trials were claimed twice
    import threading
    from collections import Counter

    from betavae.sweep import SweepSpec
    from betavae.sweep.study import claim, open_study

    spec = SweepSpec(out=str(tmp_path), weights=[float(w) for w in range(1, 9)], seeds=[0, 1, 2], metric="mig")
    studies = [open_study(spec) for _ in range(3)]
    start = threading.Barrier(len(studies))
    claimed: list[list[int]] = [[] for _ in studies]

    def claim_all(i: int) -> None:
        start.wait()
        while (trial := claim(studies[i])) is not None:
            claimed[i].append(trial.number)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(studies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    counts = Counter(n for numbers in claimed for n in numbers)
    assert sorted(counts) == list(range(24)) and set(counts.values()) == {1}
    assert all(t.state.name == "RUNNING" for t in studies[0].get_trials())


@pytest.mark.parametrize("extra, message", [
    (["--storage", "redis://localhost/0"], "unsupported study storage"),
    (["--storage", "sqlite://"], "needs a file path"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/nowhere"], "cannot use the study storage"),
    (["--metric", "nonsense"], "unknown metric"),
])
def test_bad_input_is_one_line_and_exit_2(toy_npz, tmp_path, capsys, extra, message):
    assert main(tiny_args(toy_npz, tmp_path / "s", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("betavae: error:") and message in err and "\n" not in err
    assert not (tmp_path / "s" / "trials").exists()


@pytest.mark.parametrize("weights, message", [
    ("", "no β values to sweep"), ("-1,2", "finite number >= 0"), ("1,x", "comma-separated numbers"),
    ("2,2", "repeated"),
])
def test_bad_weights(toy_npz, tmp_path, capsys, weights, message):
    args = tiny_args(toy_npz, tmp_path / "s")
    at = args.index("--beta")
    args[at:at + 2] = [f"--beta={weights}"]  # the = form, as a user passes a value that starts with '-'
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("betavae: error:") and message in err and "\n" not in err


def test_beta_alias_only_for_beta_objectives(toy_npz, tmp_path, capsys):
    assert main(tiny_args(toy_npz, tmp_path / "s", "--objective", "capacity")) == 2
    assert "--weights" in capsys.readouterr().err


def test_an_out_folder_that_is_not_a_sweeps_own_is_refused_and_left_as_it_was(toy_npz, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.csv").write_text("my precious\n")
    (mine / "report.html").write_text("mine\n")
    assert main(tiny_args(toy_npz, mine)) == 2
    err = capsys.readouterr().err.strip()
    assert "is a folder that is not a sweep's (it holds report.html, summary.csv)" in err and "\n" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["report.html", "summary.csv"]
    assert (mine / "summary.csv").read_text() == "my precious\n"

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(tiny_args(toy_npz, run)) == 2
    assert "is a training run directory" in capsys.readouterr().err
    assert [p.name for p in run.iterdir()] == ["config.json"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(tiny_args(toy_npz, afile)) == 2 and "is a file, not a folder" in capsys.readouterr().err
