import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from betavae.cli import main


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


def test_unknown_dataset_and_unsupported_image_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "mnist"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    np.save(tmp_path / "odd.npy", np.zeros((10, 48, 48), np.uint8))
    code = main(["train", "--data", str(tmp_path / "odd.npy"), "--out", str(tmp_path / "run")])
    assert code == 2 and "square images of 32, 64, 128" in capsys.readouterr().err


def test_demo_never_overwrites_an_earlier_demo(tmp_path, monkeypatch, capsys):
    from betavae import cli

    calls = []
    monkeypatch.setattr("betavae.training.train", lambda config: calls.append(config.out) or tmp_path)
    record = {"metrics": {"mig": {"values": {"mig": 0.1}}}}
    monkeypatch.setattr("betavae.metrics.evaluate_run", lambda run, metrics, seed: record)
    references = []
    monkeypatch.setattr("betavae.report.run_report",
                        lambda run, seed, reference=None: references.append(reference) or tmp_path / "report.html")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo-2").mkdir()
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--steps", "5"]) == 0
    assert calls == [str(tmp_path / "demo-3")]
    # the report and the summary show the shipped reference model beside the demo's
    from betavae import reference

    assert references == [reference.DEMO_REFERENCE]
    out = capsys.readouterr().out
    assert f"Beside the shipped reference model '{reference.DEMO_REFERENCE}'" in out
    mig = reference.summary_values(reference.evaluation(reference.DEMO_REFERENCE))["MIG"]
    assert f"{'MIG':<22}{0.1:>12.3f}{mig:>12.3f}" in out


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
    code = main(["evaluate", str(run), "--metrics", "mig"])
    assert code == 2 and "factor" in capsys.readouterr().err  # MIG needs ground-truth factors
    code = main(["evaluate", str(run), "--metrics", "nonsense"])
    assert code == 2 and "unknown metric" in capsys.readouterr().err
