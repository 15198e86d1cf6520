"""The GPU path's flags, exercised on the CPU: bf16 autocast, torch.compile, and cudagraphs' refusal."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import betavae
from betavae.errors import ConfigError
from betavae.models import build_model
from betavae.objectives.factor_vae import Discriminator
from betavae.training import loop
from betavae.training.logging import read_metrics
from betavae.training.loop import TrainingForward, matmul_arithmetic, resolve_precision

RUN = dict(arch="mlp", steps=3, batch_size=8, latents=4, lr=1e-3, seed=1, log_every=1, device="cpu", figures=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory, small_images):
    path = tmp_path_factory.mktemp("precision") / "small32.npy"  # 32x32: a small mlp
    np.save(path, small_images[:256].reshape(256, 32, 2, 32, 2).max(axis=(2, 4)))
    return path


@pytest.fixture(scope="module")
def fp32_run(data, tmp_path_factory):
    return betavae.train(betavae.TrainConfig(data=str(data), out=str(tmp_path_factory.mktemp("fp32") / "run"), **RUN))


def test_bf16_autocast_trains_with_losses_close_to_fp32(data, fp32_run, tmp_path):
    stream = io.StringIO()
    run = betavae.train(betavae.TrainConfig(data=str(data), out=str(tmp_path / "bf16"), precision="bf16", **RUN),
                        stream=stream)
    assert "precision bf16 (autocast; loss in fp32)" in stream.getvalue()
    bf16, fp32 = read_metrics(run), read_metrics(fp32_run)
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["kl"]) for r in bf16)
    # The same weights and batch at step 1: only the rounding of activations and products to bfloat16
    # (8 significant bits) differs; the loss moves by 5e-6 relative here, allowed 1e-3.
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=1e-3)
    assert bf16[0]["kl"] == pytest.approx(fp32[0]["kl"], rel=1e-2, abs=1e-4)
    assert bf16[-1]["loss"] < bf16[0]["loss"]  # it trains
    weights, reference = load_file(run / "model.safetensors"), load_file(fp32_run / "model.safetensors")
    assert any(not torch.equal(weights[k], reference[k]) for k in weights)  # autocast did take effect


def test_the_objective_sees_fp32_under_bf16_autocast():
    model = build_model("mlp", 4, (1, 32, 32))
    forward = TrainingForward(model)
    x, eps = torch.rand(2, 1, 32, 32), torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, logvar, z, recon = forward(x, eps)
        assert model.decode(z).dtype == torch.bfloat16  # autocast is on inside
    assert all(t.dtype == torch.float32 for t in (mu, logvar, z, recon))
    torch.testing.assert_close(z, mu + eps * torch.exp(0.5 * logvar))


def test_bf16_runs_factor_vaes_discriminator_in_bfloat16_too(data, tmp_path, monkeypatch):
    """The training loop hands its autocast dtype to the objective: FactorVAE's discriminator, a network of
    the objective's own, runs in bfloat16 under bf16 and in float32 under fp32."""
    seen: list[torch.dtype] = []
    forward = Discriminator.forward
    monkeypatch.setattr(Discriminator, "forward", lambda self, z: seen.append(out := forward(self, z)) or out)
    runs = {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        runs[precision] = read_metrics(betavae.train(betavae.TrainConfig(
            data=str(data), out=str(tmp_path / precision), precision=precision, objective="factor",
            discriminator_width=32, discriminator_layers=2, **RUN), stream=io.StringIO()))
        assert len(seen) == 2 * RUN["steps"]  # the VAE's step and its own, every step
        assert {out.dtype for out in seen} == {torch.float32 if precision == "fp32" else torch.bfloat16}
    assert all(np.isfinite(r["total_correlation"]) for r in runs["bf16"])
    assert runs["bf16"][0]["loss"] == pytest.approx(runs["fp32"][0]["loss"], rel=1e-3)


@pytest.mark.parametrize("has_bf16, precision, hinted", [(True, "auto", True), (True, "fp32", False),
                                                         (True, "bf16", False), (False, "auto", False)])
def test_first_line_points_cpus_with_bfloat16_to_bf16(data, tmp_path, monkeypatch, has_bf16, precision, hinted):
    """``auto`` stays fp32 on the CPU; on a processor with bfloat16 instructions the run's first line says
    that bf16 is faster there, unless the user chose the precision."""
    monkeypatch.setattr(loop, "cpu_has_bfloat16", lambda: has_bf16)
    stream = io.StringIO()
    betavae.train(betavae.TrainConfig(data=str(data), out=str(tmp_path / "run"), precision=precision, **RUN),
                  stream=stream)
    first = stream.getvalue().splitlines()[0]
    assert f"precision {'bf16' if precision == 'bf16' else 'fp32'}" in first
    assert ("this CPU has bfloat16 instructions: --precision bf16" in first) == hinted


def test_cpu_bfloat16_detection_reads_pytorchs_cpu_flags(monkeypatch):
    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert loop.cpu_has_bfloat16() is expected


@pytest.mark.parametrize("flags, expected", [("fpu sse2 avx512f avx512_bf16 avx512_vnni", True),
                                             ("fpu amx_bf16 amx_tile", True), ("fpu sse2 avx2 avx512f", False)])
def test_cpu_bfloat16_detection_reads_linux_cpu_flags_when_pytorch_does_not_say(monkeypatch, tmp_path, flags,
                                                                                expected):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a test CPU\nflags\t\t: {flags}\nbugs\t\t: avx512_bf16\n")
    assert loop.cpu_has_bfloat16(cpuinfo) is expected
    assert loop.cpu_has_bfloat16(tmp_path / "missing") is False  # not Linux: no hint rather than an error


def test_precision_choices():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None  # fp32 on the CPU
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        assert resolve_precision("auto", torch.device("cuda")) is expected
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        betavae.TrainConfig(precision="fp16").validate()


def test_compile_on_matches_eager(data, fp32_run, tmp_path):
    if not (shutil.which("gcc") or shutil.which("cc") or shutil.which("g++")):
        pytest.skip("torch.compile's default (inductor) backend builds C++ kernels for the CPU and no C/C++ "
                    "compiler (gcc, cc) is on PATH here")
    stream = io.StringIO()
    run = betavae.train(betavae.TrainConfig(data=str(data), out=str(tmp_path / "compiled"), compile="on", **RUN),
                        stream=stream)
    assert "compile on" in stream.getvalue()
    compiled, eager = read_metrics(run), read_metrics(fp32_run)
    for a, b in zip(compiled, eager):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-6)
    # Fused kernels sum in another order. Adam divides each update by the gradient's running scale, so
    # a weight whose gradient is 0 in one run and at rounding level in the other moves by up to the
    # learning rate in one run only: the bound on the largest difference is one Adam step per step
    # (5.6e-4 measured), and all but 1 in 1000 weights must agree to 1e-6 (436 of 6.8 million measured).
    w, reference = load_file(run / "model.safetensors"), load_file(fp32_run / "model.safetensors")
    diff = torch.cat([(w[k] - reference[k]).abs().flatten() for k in w])
    assert diff.max() <= RUN["lr"] * RUN["steps"]
    assert (diff > 1e-6).float().mean() <= 1e-3


def test_cudagraphs_needs_cuda(data, tmp_path):
    with pytest.raises(ConfigError, match="cudagraphs .*needs a CUDA device.*--compile on"):
        betavae.TrainConfig(compile="cudagraphs", device="cpu").validate()
    if not torch.cuda.is_available():  # device auto picks the CPU here
        config = {**RUN, "device": "auto"}
        with pytest.raises(ConfigError, match="cudagraphs .*needs a CUDA device"):
            betavae.train(betavae.TrainConfig(data=str(data), out=str(tmp_path / "graphs"), compile="cudagraphs",
                                              **config))
        assert not (tmp_path / "graphs").exists()


def test_tf32_needs_cuda(data, tmp_path):
    assert resolve_precision("tf32", torch.device("cpu")) is None  # fp32 tensors: no autocast
    with pytest.raises(ConfigError, match="tf32 .*needs a CUDA device.*--device is cpu; use fp32"):
        betavae.TrainConfig(precision="tf32", device="cpu").validate()
    if not torch.cuda.is_available():  # device auto picks the CPU here: refused before anything is written
        config = {**RUN, "device": "auto"}
        with pytest.raises(ConfigError, match="tf32 .*needs a CUDA device, but this run trains on cpu"):
            betavae.train(betavae.TrainConfig(data=str(data), out=str(tmp_path / "tf32"), precision="tf32", **config))
        with pytest.raises(ConfigError, match="tf32 .*needs a CUDA device"):
            betavae.train_many([betavae.TrainConfig(data=str(data), out=str(tmp_path / "many"), precision="tf32",
                                                    **config)])
        assert not (tmp_path / "tf32").exists() and not (tmp_path / "many").exists()


def test_tf32_sets_the_matmul_precision_while_inside_only():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        with matmul_arithmetic("tf32"):
            assert torch.get_float32_matmul_precision() == "high"
        assert torch.get_float32_matmul_precision() == "highest"
        with pytest.raises(RuntimeError, match="inside"):  # given back when the training raises too
            with matmul_arithmetic("tf32"):
                raise RuntimeError("inside")
        assert torch.get_float32_matmul_precision() == "highest"
        torch.set_float32_matmul_precision("medium")  # a caller's own setting is kept by the other precisions
        for precision in ("auto", "fp32", "bf16"):
            with matmul_arithmetic(precision):
                assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


def test_flags_reach_the_config():
    from betavae.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--precision", "bf16", "--compile", "on"])
    config = config_from_args(args)
    assert (config.precision, config.compile) == ("bf16", "on")
    assert (betavae.TrainConfig().precision, betavae.TrainConfig().compile) == ("auto", "off")
