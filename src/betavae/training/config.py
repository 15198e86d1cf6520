"""The training configuration: one flat, typed dataclass saved with every run and checkpoint.

Each field's ``metadata["help"]`` is its documentation and the help text of its command-line flag
(``--field-name``), so the CLI and the config cannot drift apart.
"""

from __future__ import annotations

import json
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from betavae.checks import check_device, check_input_path, check_output_path, check_seed, shown
from betavae.data import DATASETS, IMAGE_SIZES
from betavae.errors import CheckpointError, ConfigError
from betavae.files import write_json_atomic
from betavae.models import ARCHITECTURES
from betavae.models.architectures import WIDTH_PARAMETER
from betavae.objectives import ESTIMATORS, LIKELIHOODS, OBJECTIVES, SCHEDULES
from betavae.training.memory import check_memory
from betavae.training.recipes import RECIPES, recipe_values


#: The config's file in a run directory (betavae.training.rundir names the others).
CONFIG_FILE = "config.json"
#: The named dataset a run trains on when neither --dataset nor --data is given.
DEFAULT_DATASET = "dsprites"
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
COMPILE_MODES = ("off", "on", "cudagraphs")
LR_SCHEDULES = ("constant", "cosine")
DECODER_INITS = ("default", "data")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    # Data
    dataset: str = _opt(DEFAULT_DATASET, "named dataset, rendered procedurally (no download)", choices=tuple(DATASETS))
    data: str | None = _opt(None, "data to use instead of --dataset: a folder of PNG/JPEG images, a .npy/.npz image "
                                  "array, or a standard file (dSprites .npz, 3dshapes.h5, mpi3d_*.npz, SmallNORB or "
                                  "Cars3D files); see docs/data.md")
    image_size: int | None = _opt(None, "side of the square training images, 32, 64 or 128, for data that is resized "
                                        "(folders, arrays, SmallNORB, Cars3D; default: 64 for folders, SmallNORB and "
                                        "Cars3D, the array's own size for arrays)")
    factors: str | None = _opt(None, "CSV of factor labels for --data (a header row; a 'path' column for folders, rows "
                                     "in image order for arrays) so supervised metrics can run on your data")
    allow_subset: bool = _opt(False, "accept a standard dataset file with fewer images than published")
    skip_bad: bool = _opt(False, "leave out unreadable images of a --data folder (their count and names are printed) "
                                 "instead of stopping")
    # Model
    recipe: str | None = _opt(None, "a named recipe of config values found to work ('betavae recipes' lists them; "
                                    "fast-cpu disentangles dSprites on a laptop CPU in minutes); flags given "
                                    "explicitly win over the recipe")
    arch: str = _opt("burgess", "network architecture", choices=tuple(ARCHITECTURES))
    width: int | None = _opt(None, "channels of each convolution (burgess; published 32), hidden units (mlp; "
                                   "published 1200) or channels of the decoder (broadcast; 32); default: the "
                                   "published width")
    latents: int = _opt(10, "number of latent dimensions")
    # Objective
    objective: str = _opt("beta", "training objective: beta (β-VAE), capacity (capacity-annealed β-VAE), factor (FactorVAE), "
                          "tc (β-TCVAE), dip1 / dip2 (DIP-VAE-I / -II); see docs/objectives.md", choices=tuple(OBJECTIVES))
    beta: float = _opt(4.0, "beta: weight β of the KL term (β = 1 is the plain VAE; β > 1 favours disentanglement); "
                            "tc: weight β of the total correlation")
    beta_schedule: str = _opt("constant", "beta: how β reaches --beta: constant, linear (from 0 over --beta-warmup-steps) or "
                                          "cyclical (Fu et al. 2019: --beta-cycles cycles over --steps)", choices=SCHEDULES)
    beta_warmup_steps: int = _opt(10000, "beta, linear schedule: steps over which β grows from 0 to --beta")
    beta_cycles: int = _opt(4, "beta, cyclical schedule: number of cycles M over the run")
    beta_cycle_ratio: float = _opt(0.5, "beta, cyclical schedule: fraction R of each cycle over which β rises from 0 (then stays)")
    capacity_gamma: float = _opt(1000.0, "capacity: weight γ of |KL − C|")
    capacity_max: float = _opt(25.0, "capacity: final target KL C_max, in nats")
    capacity_steps: int = _opt(100000, "capacity: steps over which the target C grows linearly from 0 to C_max")
    factor_gamma: float = _opt(35.0, "factor: weight γ of the discriminator's total-correlation estimate")
    discriminator_lr: float = _opt(1e-4, "factor: Adam learning rate of the discriminator (betas 0.5, 0.9)")
    discriminator_width: int = _opt(1000, "factor: hidden units of each discriminator layer (Kim & Mnih 2018: 1000)")
    discriminator_layers: int = _opt(6, "factor: hidden layers of the discriminator (Kim & Mnih 2018: 6)")
    tc_alpha: float = _opt(1.0, "tc: weight α of the mutual information between x and z")
    tc_gamma: float = _opt(1.0, "tc: weight γ of the dimension-wise KL")
    estimator: str = _opt("mss", "tc: estimator of log q(z): mss (minibatch stratified sampling) or mws (minibatch "
                                 "weighted sampling)", choices=ESTIMATORS)
    tc_memory: int = _opt(0, "tc: posteriors of this many earlier images kept (without gradient) and added to the "
                             "batch's in the estimate of q(z): it saturates at log N less when posteriors are "
                             "narrow, at a cost that grows with K (docs/objectives.md); 0: the batch alone "
                             "(Chen et al. 2018)")
    dip_lambda_od: float = _opt(10.0, "dip1, dip2: weight λ_od of the off-diagonal covariance penalty")
    dip_lambda_d: float | None = _opt(None, "dip1, dip2: weight λ_d of the diagonal covariance penalty "
                                            "(default: 10·λ_od for dip1, λ_od for dip2)")
    decoder_init: str = _opt("default", "the decoder's output bias at step 0: default (PyTorch's initialisation) or data "
                                        "(the data's mean image, so training does not first spend hundreds of steps "
                                        "learning it while the KL falls to zero)", choices=DECODER_INITS)
    likelihood: str = _opt("bernoulli", "reconstruction likelihood p(x|z)", choices=LIKELIHOODS)
    likelihood_scale: float = _opt(0.1, "fixed σ of the gaussian likelihood or b of the laplace likelihood")
    # Optimisation
    steps: int = _opt(20000, "number of optimisation steps")
    time_limit: float | None = _opt(None, "stop after this many minutes of training (counted over resumes), "
                                          "as if --steps ended there: checkpoint, model, diagnosis and figures")
    batch_size: int = _opt(64, "images per step")
    lr: float = _opt(5e-4, "Adam learning rate")
    lr_schedule: str = _opt("constant", "how the learning rate moves over --steps: constant, or cosine (from --lr down "
                                        "to 0 at --steps along half a cosine; Loshchilov & Hutter 2017)",
                            choices=LR_SCHEDULES)
    lr_decay_fraction: float = _opt(1.0, "cosine schedule: the last fraction of --steps over which the rate falls; "
                                         "--lr is held before it (1: decay over the whole run; 0.2: held for the first "
                                         "four fifths of the steps, then half a cosine down to 0)")
    lr_warmup_steps: int = _opt(0, "steps over which the learning rate first grows linearly from --lr / N to the "
                                   "schedule's rate (Goyal et al. 2017), so that early large steps do not press "
                                   "every posterior onto the prior; 0: no warm-up")
    seed: int = _opt(0, "random seed (weights, batches and sampling noise)")
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    precision: str = _opt("auto", "arithmetic of the model's forward and backward passes: auto (bf16 autocast on CUDA "
                                  "devices that support bfloat16, fp32 elsewhere), fp32, tf32 (fp32 with "
                                  "TensorFloat-32 matrix products, CUDA only), or bf16 (bfloat16 autocast, also on the "
                                  "CPU); the loss and KL are always computed in fp32",
                          choices=PRECISIONS)
    compile: str = _opt("off", "torch.compile the model's forward pass: off, on, or cudagraphs (on, with CUDA graphs: "
                               "mode reduce-overhead, CUDA only)", choices=COMPILE_MODES)
    # Output
    out: str | None = _opt(None, "run directory (default: runs/<dataset>-<objective>-beta<β>-seed<seed>)")
    overwrite: bool = _opt(False, "replace an existing run directory made by betavae")
    log_every: int = _opt(100, "log averaged training terms every N steps")
    checkpoint_every: int = _opt(1000, "write a checkpoint every N steps")
    keep_checkpoints: int = _opt(3, "how many of the newest checkpoints to keep")
    skip_nonfinite: int = _opt(0, "skip up to N steps whose loss or gradients are NaN/inf instead of stopping "
                                  "(checks every step: one device sync per step)")
    collapse_threshold: float = _opt(0.1, "a latent dimension whose KL (nats) stays below this counts as collapsed")
    figures: bool = _opt(True, "draw figures at the end of training (--no-figures to skip)")

    def learning_rate(self, step: int) -> float:
        """Adam's learning rate for the update of 0-based ``step``, as ``lr_schedule`` says, scaled by
        ``(step + 1) / lr_warmup_steps`` during the warm-up."""
        if step < self.lr_warmup_steps:
            return self._scheduled_rate(step) * (step + 1) / self.lr_warmup_steps
        return self._scheduled_rate(step)

    def _scheduled_rate(self, step: int) -> float:
        if self.lr_schedule == "cosine":
            held = self.steps * (1.0 - self.lr_decay_fraction)  # steps at the full rate before the decay
            if step <= held:
                return self.lr
            return 0.5 * self.lr * (1.0 + math.cos(math.pi * (min(step, self.steps) - held) / (self.steps - held)))
        return self.lr

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        name = self.data and Path(self.data).stem or self.dataset
        return Path("runs") / f"{name}-{self.objective}-beta{self.beta:g}-seed{self.seed}"

    def validate(self) -> "TrainConfig":
        """Check every value; raise :class:`ConfigError` naming the first bad one and the fix."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices and not (f.name == "dataset" and self.data):
                raise ConfigError(f"unknown {f.name} '{value}'; choose one of: {', '.join(choices)}.")
        _validate_data(self)
        _positive_int(self, "latents", "steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                      "beta_warmup_steps", "beta_cycles", "capacity_steps", "discriminator_width",
                      "discriminator_layers")
        if self.lr_warmup_steps < 0:
            raise ConfigError(f"lr_warmup_steps must be a whole number >= 0 (0: no warm-up), got {self.lr_warmup_steps}.")
        if self.tc_memory < 0:  # (its type is checked with every field's)
            raise ConfigError(f"tc_memory must be a whole number >= 0 (0: no memory), got {self.tc_memory!r}.")
        if self.tc_memory and self.objective != "tc":
            raise ConfigError(f"--tc-memory applies to --objective tc only; drop it for --objective {self.objective}.")
        if self.skip_nonfinite < 0:
            raise ConfigError(f"skip_nonfinite must be a whole number >= 0, got {self.skip_nonfinite}.")
        for name in ("beta", "collapse_threshold", "capacity_gamma", "capacity_max", "factor_gamma", "tc_alpha",
                     "tc_gamma", "dip_lambda_od", "dip_lambda_d"):
            value = getattr(self, name)
            if value is None and name == "dip_lambda_d":
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}.")
        for name in ("lr", "likelihood_scale", "discriminator_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}.")
        if not 0 < self.lr_decay_fraction <= 1:
            raise ConfigError(f"lr_decay_fraction must be in (0, 1], got {self.lr_decay_fraction!r}; 1 decays over the "
                              f"whole run, 0.2 over its last fifth.")
        if self.lr_decay_fraction != 1 and self.lr_schedule != "cosine":
            raise ConfigError(f"--lr-decay-fraction applies to --lr-schedule cosine only; drop it or add "
                              f"--lr-schedule cosine.")
        if not 0 < self.beta_cycle_ratio <= 1:
            raise ConfigError(f"beta_cycle_ratio must be in (0, 1], got {self.beta_cycle_ratio!r}; 0.5 ramps β over half of each cycle.")
        if self.beta_schedule != "constant" and self.objective != "beta":
            raise ConfigError(f"--beta-schedule applies to --objective beta only; drop it for --objective {self.objective}.")
        if self.beta_schedule == "cyclical" and self.beta_cycles > self.steps:
            raise ConfigError(f"beta_cycles ({self.beta_cycles}) exceeds steps ({self.steps}); use fewer --beta-cycles.")
        if self.batch_size < OBJECTIVES[self.objective].min_batch_size:
            raise ConfigError(f"objective {self.objective} estimates batch statistics and needs --batch-size of at least "
                              f"{OBJECTIVES[self.objective].min_batch_size}, got {self.batch_size}.")
        check_seed(self.seed)
        check_device(self.device)
        if self.time_limit is not None and not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise ConfigError(f"time_limit must be a number of minutes > 0, got {self.time_limit!r}.")
        if self.width is not None:
            if self.arch not in WIDTH_PARAMETER:
                raise ConfigError(f"architecture '{self.arch}' has fixed published widths; drop --width or use "
                                  f"--arch {' or '.join(WIDTH_PARAMETER)}.")
            if self.width < 1:
                raise ConfigError(f"width must be a whole number >= 1, got {self.width}.")
        if self.recipe is not None:
            if self.recipe not in RECIPES:
                raise ConfigError(f"unknown recipe '{self.recipe}'; choose one of: {', '.join(RECIPES)}.")
        if self.compile == "cudagraphs" and self.device == "cpu":
            raise ConfigError("--compile cudagraphs captures CUDA graphs and needs a CUDA device, but --device is cpu; "
                              "use --compile on (or off) on the CPU.")
        if self.precision == "tf32" and self.device == "cpu":
            raise ConfigError("--precision tf32 is the TensorFloat-32 arithmetic of NVIDIA GPUs and needs a CUDA "
                              "device, but --device is cpu; use fp32 (or bf16) on the CPU.")
        check_output_path(self.run_dir(), "--out")
        check_memory(self.arch, self.latents, self.batch_size, self.smallest_image_shape(), self.width, self.device,
                     self.precision)
        return self

    def smallest_image_shape(self) -> tuple[int, int, int]:
        """The images' shape ``(C, H, W)`` for a named dataset; for ``--data``, the smallest it can be."""
        if not self.data:
            return DATASETS[self.dataset]().image_shape
        size = self.image_size or min(IMAGE_SIZES)
        return (1, size, size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown config keys {unknown}; this betavae knows: {', '.join(sorted(known))}. "
                "The file may come from another version or not be a betavae config."
            )
        return cls(**values)

    def with_absolute_paths(self) -> "TrainConfig":
        """A copy whose ``data`` and ``factors`` are absolute paths, so that the run's config.json names the
        same files whatever directory it is later resumed, evaluated or reported from."""
        paths = {name: os.path.abspath(value) for name in ("data", "factors") if (value := getattr(self, name))}
        return replace(self, **paths)

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, run_dir: str | Path) -> "TrainConfig":
        """The config saved in ``run_dir/config.json`` (or a config file path), validated."""
        path = Path(run_dir)
        try:
            path = path / CONFIG_FILE if path.is_dir() else path
            found = path.is_file()
        except OSError as exc:  # a name longer than the file system allows, a folder it may not read
            raise CheckpointError(f"cannot read {shown(run_dir, 200)}: {exc.strerror or exc}; is it a betavae run "
                                  "directory?") from None
        if not found:
            raise CheckpointError(f"{shown(path, 200)} does not exist; is {shown(run_dir, 200)} a betavae run directory?")
        if path.suffix.lower() != ".json":
            raise CheckpointError(f"{shown(path, 200)} is a file, not a betavae run directory (a folder holding "
                                  f"{CONFIG_FILE}); give the run's folder.")
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not valid JSON ({exc}); the run's config is damaged.") from exc
        if not isinstance(values, dict):
            raise CheckpointError(f"{path} does not hold a config object.")
        try:
            return cls.from_dict(values).validate()
        except (ConfigError, TypeError) as exc:
            raise CheckpointError(f"{path}: {exc}") from exc


def field_type(annotation: object) -> type:
    """The scalar type of a field annotation such as ``int`` or ``"str | None"``."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {}, {})  # postponed annotations of builtin types, e.g. "str | None"
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation  # type: ignore[return-value]


def _check_type(name: str, value: Any, annotation: object) -> None:
    kind = field_type(annotation)
    optional = isinstance(annotation, str) and "None" in annotation
    if value is None and optional:
        return
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"{name} must be of type {kind.__name__}, got {value!r} ({type(value).__name__}).")


def _validate_data(config: TrainConfig) -> None:
    """The data fields: a supported image size; labels, subsets and skipping only with --data."""
    if config.image_size is not None and config.image_size not in IMAGE_SIZES:
        raise ConfigError(f"image_size must be one of {', '.join(map(str, IMAGE_SIZES))}, got {config.image_size!r}.")
    if config.data and config.dataset != DEFAULT_DATASET:
        raise ConfigError(f"--data {shown(config.data, 200)} and --dataset {config.dataset} both name the training data; "
                          "drop one (--data trains on your files, --dataset on a named dataset).")
    if config.factors is not None and not config.data:
        raise ConfigError("--factors labels your own --data; the named datasets already know their factors. "
                          "Pass --data PATH or drop --factors.")
    if config.factors is not None and Path(config.factors).suffix.lower() != ".csv":
        raise ConfigError(f"--factors must be a .csv file, got {config.factors}; a .npz can carry its labels "
                          "as a 'factors' array instead.")
    for name in ("data", "factors"):
        if getattr(config, name) is not None:
            check_input_path(getattr(config, name), f"--{name}")
    for name in ("allow_subset", "skip_bad"):
        if getattr(config, name) and not config.data:
            raise ConfigError(f"--{name.replace('_', '-')} applies only to --data; drop it or pass --data PATH.")


def _positive_int(config: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}.")


def recipe_config(name: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` of recipe ``name`` (see :mod:`betavae.training.recipes`), ``overrides`` winning."""
    return TrainConfig(**{**recipe_values(name), **overrides})
