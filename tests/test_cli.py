import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from betavae.cli import main
from tests.metrics.conftest import FactorGrid
from tests.report.conftest import TurnedEncoder


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "betavae", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_train_and_traverse_end_to_end(small_npy, tmp_path):
    out = tmp_path / "run"
    result = _run("train", "--data", small_npy, "--steps", 30, "--batch-size", 16, "--latents", 3,
                  "--log-every", 10, "--checkpoint-every", 15, "--out", out, "--lr", "1e-3")
    assert result.returncode == 0, result.stderr
    assert "step 30/30" in result.stderr and "diagnosis" in result.stderr
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "diagnosis.json"):
        assert (out / name).is_file()
    figures = out / "figures"
    for name in ("reconstructions.png", "samples.png", "traversals.png", "training_curves.png"):
        with Image.open(figures / name) as img:
            assert img.width > 100 and img.height > 50
    with Image.open(figures / "traversals.gif") as gif:
        assert gif.n_frames == 20
    (figures / "traversals.png").unlink()
    result = _run("traverse", out)
    assert result.returncode == 0, result.stderr
    assert (figures / "traversals.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["--beta", "-1"], "beta must be a finite number >= 0"),
    (["--latents", "0"], "latents must be a whole number >= 1"),
    (["--lr", "0"], "lr must be a finite number > 0"),
    (["--data", "missing.npz"], "does not exist"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda:7"], "cuda"),
    (["--batch-size", "100000"], "exceeds the 512 images"),
])
def test_bad_input_gets_one_line_and_exit_code_2(args, message, small_npy, tmp_path, capsys):
    if "--data" not in args:
        args = ["--data", str(small_npy), *args]
    code = main(["train", *args, "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("betavae: error:")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def memory_of_16_gib(monkeypatch):
    """The machine's memory as the estimate sees it: 16 GiB, whatever the machine running the tests has."""
    monkeypatch.setattr("betavae.training.memory.device_memory", lambda device: (16 * 2**30, "this machine's memory"))


@pytest.mark.parametrize("args,message", [
    (["--seed", "-1"], "seed must be a whole number from 0 to 2**63 - 1"),
    (["--seed", str(2**63)], "seed must be a whole number from 0 to 2**63 - 1"),
    (["--seed", str(2**64 + 7)], "seed must be a whole number from 0 to 2**63 - 1"),
    (["--latents", "1000000000"], "lower --latents"),
    (["--dataset", "dsprites", "--batch-size", "500000"], "lower --batch-size to at most"),
    (["--arch", "mlp", "--width", "10000000"], "lower --latents or --width"),
    (["--latents", str(10**30)], "far beyond what any machine can train"),
])
def test_issue_cases_get_one_line_and_nothing_written(args, message, small_npy, tmp_path, capsys, memory_of_16_gib):
    data = [] if "--dataset" in args else ["--data", str(small_npy)]
    code = main(["train", *data, *args, "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("betavae: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.npy"]


def test_memory_message_gives_the_estimate_and_what_fits(tmp_path, capsys, memory_of_16_gib):
    code = main(["train", "--batch-size", "500000", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    # burgess on 64x64 dSprites: 180,786 numbers a layer outputs per image, 4 bytes each (measured peak: within 10%)
    assert code == 2 and "training would need about 336.7 GiB" in err and "this machine's memory is 16.0 GiB" in err
    assert "the model's 502,005 parameters need 7.7 MiB" in err and "a batch of 500,000 images 336.7 GiB" in err
    assert "lower --batch-size to at most 23,746." in err  # 16 GiB less the parameters, over 723 KB an image


@pytest.mark.parametrize("out, message", [
    ("afile/run", "which is a file, not a folder"),
    ("afile/a/b/c", "is below afile, which is a file"),
    ("x" * 300, "300 bytes long, more than the 255"),
    ("runs/" + "é" * 128, "256 bytes long"),
    ("bad\udcff\udcfename", "is not valid UTF-8 text"),
])
@pytest.mark.parametrize("command", ["train", "demo", "sweep"])
def test_out_that_cannot_be_made_is_refused_before_any_directory(out, message, command, small_npy, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file")
    argv = {"train": ["train", "--data", str(small_npy), "--steps", "1"], "demo": ["demo", "--steps", "1"],
            "sweep": ["sweep", "--data", str(small_npy), "--beta", "1", "--seeds", "1"]}[command]
    assert main([*argv, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("betavae: error: ") and err.count("\n") == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "small.npy"]


def test_non_utf8_out_from_a_real_command_line(small_npy, tmp_path):
    """The bytes of a real argv (not UTF-8) reach betavae as surrogate escapes: refused, no directory made."""
    result = subprocess.run([sys.executable, "-m", "betavae", "train", "--data", str(small_npy), "--steps", "1",
                             "--out", os.fsencode(tmp_path) + b"/bad\xff\xfename"], capture_output=True)
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2 and "Traceback" not in err
    assert err.startswith("betavae: error: --out") and "bad\\xff\\xfename is not valid UTF-8" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.npy"]


@pytest.mark.parametrize("command", ["evaluate", "traverse", "report"])
@pytest.mark.parametrize("seed", ["-1", str(2**63), "99999999999999999999"])
def test_run_commands_refuse_bad_seeds_before_loading(command, seed, tmp_path, capsys):
    # no run directory at all: the seed is checked first, before the run is read or anything written
    assert main([command, str(tmp_path / "no-run"), f"--seed={seed}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("betavae: error: seed must be a whole number from 0 to 2**63 - 1") and err.count("\n") == 1


def test_unknown_dataset_and_unsupported_image_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "mnist"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    np.save(tmp_path / "odd.npy", np.zeros((10, 48, 48), np.uint8))
    code = main(["train", "--data", str(tmp_path / "odd.npy"), "--out", str(tmp_path / "run")])
    assert code == 2 and "square images of 32, 64, 128" in capsys.readouterr().err


@pytest.mark.parametrize("degrees, finding", [
    (20.0, "In this run, f3 and f4 share z1 and z4, turned 20° from the dims' axes"),
    (3.0, "This run has no pair of factors mixed at an angle of 10° or more."),
])
def test_demo_never_overwrites_an_earlier_demo(degrees, finding, tmp_path, monkeypatch, capsys):
    from betavae import cli

    calls, configs = [], []
    monkeypatch.setattr("betavae.training.train",
                        lambda config: calls.append(config.out) or configs.append(config) or tmp_path)
    from betavae.metrics.run import factor_pairs

    sizes = (3, 6, 40, 32, 32)  # the trained code: factors 3 and 4 (x and y) turned in dims 1 and 4
    record = {"metrics": {"mig": {"values": {"mig": 0.1}}},
              "factor_pairs": factor_pairs(TurnedEncoder(degrees, sizes), FactorGrid(sizes), seed=0)}
    monkeypatch.setattr("betavae.metrics.evaluate_run", lambda run, metrics, seed: record)
    references = []
    monkeypatch.setattr("betavae.report.run_report",
                        lambda run, seed, reference=None: references.append(reference) or tmp_path / "report.html")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo-2").mkdir()
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--steps", "5"]) == 0
    assert calls == [str(tmp_path / "demo-3")]
    # the seed's own objective, a β-VAE with β > 1, by the named recipe
    (config,) = configs
    assert (config.recipe, config.objective, config.steps) == ("fast-beta", "beta", 5)
    assert config.beta > 1 and config.width == 16 and config.decoder_init == "data"
    # the report and the summary show the shipped reference model beside the demo's
    from betavae import reference

    assert references == [reference.DEMO_REFERENCE]
    out = capsys.readouterr().out
    assert f"Beside the shipped reference model '{reference.DEMO_REFERENCE}'" in out
    mig = reference.summary_values(reference.evaluation(reference.DEMO_REFERENCE))["MIG"]
    assert f"{'MIG':<22}{0.1:>12.3f}{mig:>12.3f}" in out
    # what this run's code does with x and y, measured
    assert finding in out


def test_resume_refuses_other_settings(small_npy, tmp_path, capsys):
    code = main(["train", "--resume", str(tmp_path), "--beta", "2"])
    assert code == 2 and "drop --beta" in capsys.readouterr().err
    code = main(["train", "--resume", str(tmp_path)])
    assert code == 2 and "config.json" in capsys.readouterr().err


def test_help_lists_commands():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("train", "demo", "traverse", "evaluate"):
        assert command in result.stdout


def test_evaluate_prints_a_table_and_writes_the_file(small_npy, tmp_path, capsys):
    import betavae

    run = betavae.train(betavae.TrainConfig(data=str(small_npy), steps=5, batch_size=16, latents=3,
                                            out=str(tmp_path / "run"), figures=False))
    code = main(["evaluate", str(run), "--metrics", "unsupervised"])
    out = capsys.readouterr().out
    assert code == 0 and "unsupervised" in out and (run / "evaluation.json").is_file()
    assert "factor_pairs" not in json.loads((run / "evaluation.json").read_text())  # no factors, no pairs
    assert "Pairs of factors" not in out
    code = main(["evaluate", str(run), "--metrics", "mig"])
    assert code == 2 and "factor" in capsys.readouterr().err  # MIG needs ground-truth factors
    code = main(["evaluate", str(run), "--metrics", "nonsense"])
    assert code == 2 and "unknown metric" in capsys.readouterr().err


def test_evaluate_prints_which_factors_the_reconstructions_show():
    from betavae.cli import _readback_summary

    record = {"reconstructed_factors": [
        {"factor": "shape", "values": 3, "images": 1000, "accuracy": 0.632, "floor": 0.33},
        {"factor": "orientation", "values": 40, "images": 1000, "accuracy": 0.066, "floor": 0.033}]}
    text = _readback_summary(record)
    assert "(1,000 images)" in text
    assert "  shape         63.2% of images   floor  33.0%   (3 values)" in text
    assert "  orientation    6.6% of images   floor   3.3%   (40 values)" in text
    assert _readback_summary({"reconstructed_factors": []}) == "" and _readback_summary({}) == ""


@pytest.mark.parametrize("degrees", [25.0, 3.0])
def test_evaluate_prints_the_pairs_of_factors_and_their_angle(degrees):
    from betavae.cli import _pairs_summary
    from betavae.metrics.run import factor_pairs

    sizes = (3, 6, 40, 32, 32)
    record = {"factor_pairs": factor_pairs(TurnedEncoder(degrees, sizes), FactorGrid(sizes), seed=0)}
    text = _pairs_summary(record)
    assert f"  f3 and f4: z1 and z4, {degrees:.0f}°" in text
    assert ("(turned)" in text) == (degrees >= 10) and ("MIG scores low" in text) == (degrees >= 10)
    assert _pairs_summary({"factor_pairs": []}) == "" and _pairs_summary({}) == ""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 5-step run on 1-channel 64x64 images, with its logs and diagnosis, no figures."""
    import betavae
    from betavae.data.dsprites import DSprites, render

    data = tmp_path_factory.mktemp("data") / "images.npy"
    np.save(data, render(DSprites().sample_factors(64, np.random.default_rng(0))))
    return betavae.train(betavae.TrainConfig(data=str(data), steps=5, batch_size=16, latents=3, log_every=5,
                                             out=str(tmp_path_factory.mktemp("runs") / "run"), figures=False))


def _files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != ".betavae.lock")


@pytest.mark.parametrize("command", ["evaluate", "report", "traverse"])
def test_data_that_does_not_fit_the_model_is_one_line_before_any_work(command, tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": None, "dataset": "color-dsprites"}))
    before = _files(run)
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"betavae: error: the images of {run}'s data (color-dsprites) have 3 channels of 64x64 "
                          "pixels, but its model was trained on images with 1 channel of 64x64 pixels") and err.count("\n") == 1
    assert "config.json back to the data the model was trained on" in err
    assert _files(run) == before  # no figure, report or evaluation written


def test_evaluate_refuses_a_device_as_train_does(tmp_path, capsys):
    assert main(["train", "--device", "banana", "--out", str(tmp_path / "run")]) == 2
    train_err = capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "no-run"), "--device", "banana"]) == 2
    err = capsys.readouterr().err
    assert err == train_err and err.startswith("betavae: error: unknown device 'banana'") and err.count("\n") == 1


def test_evaluate_refuses_a_batch_size_beyond_the_machine(tiny_run, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr("betavae.metrics.run.device_memory", lambda device: (16 * 2**30, "this machine's memory"))
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["evaluate", str(run), "--metrics", "unsupervised", "--batch-size", "1000000000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("betavae: error: encoding 1,000,000,000 images per pass would need about") and err.count("\n") == 1
    assert "this machine's memory is 16.0 GiB; lower --batch-size to at most" in err
    assert main(["evaluate", str(run), "--batch-size", str(10**12)]) == 2
    assert "--batch-size must be a whole number from 1 to 68,719,476,736" in capsys.readouterr().err
    assert not (run / "evaluation.json").exists()


@pytest.mark.parametrize("command, target, told", [
    (["evaluate", "RUN"], "betavae.metrics.evaluate_run", "RUN/evaluation.json was left as it was"),
    (["train", "--out", "RUN"], "betavae.training.train", "checkpoints written so far are kept (resume with "
                                                          "'betavae train --resume RUN')"),
    (["train", "--resume", "RUN"], "betavae.training.resume", "resume with 'betavae train --resume RUN'"),
    (["sweep", "--beta", "1", "--seeds", "1", "--out", "RUN"], "betavae.sweep.run_sweep",
     "the running ones were re-enqueued; run the same command again to finish the sweep"),
    (["report", "RUN"], "betavae.report.run_report", "nothing else was changed"),
])
def test_ctrl_c_says_what_the_interrupted_command_left(command, target, told, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    run = str(tmp_path / "run")
    assert main([run if arg == "RUN" else arg for arg in command]) == 130
    err = capsys.readouterr().err
    assert err.startswith("betavae: interrupted; ") and told.replace("RUN", run) in err and err.count("\n") == 1
    assert ("--resume" in err) == (command[0] == "train")  # the training advice for training alone
