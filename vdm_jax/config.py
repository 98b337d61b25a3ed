"""The experiment config: typed sections and their validation.

A config file (configs/*.py) builds on `base_config()` and returns an ml_collections.ConfigDict
with the sections data, model, diffusion, optim, train, mesh, checkpoint, sample, distill, cascade;
`ExperimentConfig.from_config_dict` turns each into its frozen dataclass (each checks its value
ranges), rejecting unknown keys with the nearest known one and the list of known ones (as does
`check_overrides` for --config.<section>.<key> flags, before ml_collections parses them), and
`validate_experiment` checks everything else that needs no compilation: mesh, model vs data, the
batch vs the dataset and this machine's memory. Each raises ConfigError, one line saying what to
change. Config files import only this module (never the trainer).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from vdm_jax.data.config import DataConfig, DatasetInfo
from vdm_jax.diffusion import DiffusionConfig, SamplerConfig
from vdm_jax.diffusion.distillation import DistillConfig
from vdm_jax.model.build import count_params
from vdm_jax.model.config import ModelConfig
from vdm_jax.parallel.host import check_fits_in_memory
from vdm_jax.parallel.sharding import num_batch_devices
from vdm_jax.superres import CascadeConfig, check_cascade


class ConfigError(ValueError):
  """A config value (or option) that has to change; the message is one line saying how."""


# Value ranges: (test, what the value must be). The tests are positive so that NaN fails them.
Rule = tuple[Callable[[Any], bool], str]
AT_LEAST_1: Rule = (lambda v: v >= 1, ">= 1")
AT_LEAST_0: Rule = (lambda v: v >= 0, ">= 0")
POSITIVE: Rule = (lambda v: v > 0, "> 0")
PROBABILITY: Rule = (lambda v: 0 <= v <= 1, "in [0, 1]")
DECAY: Rule = (lambda v: 0 <= v < 1, "in [0, 1)")
FINITE: Rule = (lambda v: math.isfinite(v), "a finite number")


def check_ranges(section: str, config: Any, rules: dict[str, Rule]) -> None:
  """ValueError naming the first field of `config` outside its rule and the flag that sets it."""
  for field, (ok, rule) in rules.items():
    value = getattr(config, field)
    if not ok(value):
      raise ValueError(f"{section}.{field}={value!r} is out of range: it must be {rule}; change "
                       f"--config.{section}.{field}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Adam/AdamW with warmup, then constant or cosine decay; global-norm clipping; EMA.

  VDM: Adam lr 3e-4, beta2 0.99, EMA 0.9999 (UCF-101); BAIR lr 2e-4, weight decay 0.01.
  """
  optimizer: str = "adam"  # "adam" | "adamw"
  learning_rate: float = 3e-4
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-8
  weight_decay: float = 0.0
  warmup_steps: int = 100
  schedule: str = "constant"  # "constant" | "cosine" (decays to 0 at train.num_steps)
  grad_clip_norm: float = 1.0  # 0 = no clipping
  grad_accum_steps: int = 1
  ema_decay: float = 0.999
  trainable: str = "all"  # "temporal": only temporal layers train (image-first, train/inflate.py)

  def __post_init__(self):
    if self.optimizer not in ("adam", "adamw") or self.trainable not in ("all", "temporal"):
      raise ValueError(f"optim.optimizer={self.optimizer!r}, optim.trainable={self.trainable!r}: "
                       "use 'adam' or 'adamw', and 'all' or 'temporal'")
    if self.schedule not in ("constant", "cosine"):
      raise ValueError(f"optim.schedule={self.schedule!r}: use 'constant' or 'cosine'")
    check_ranges("optim", self, {
        "learning_rate": POSITIVE, "b1": DECAY, "b2": DECAY, "eps": POSITIVE,
        "weight_decay": AT_LEAST_0, "warmup_steps": AT_LEAST_0,
        "grad_clip_norm": (AT_LEAST_0[0], ">= 0 (0: no clipping)"), "grad_accum_steps": AT_LEAST_1,
        "ema_decay": DECAY})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The loop: batch, length, logging, samples, conditioning dropout."""
  global_batch_size: int = 8
  num_steps: int = 1000
  seed: int = 0
  log_every: int = 50
  sample_every: int = 500  # 0 = only at the end
  checkpoint_every: int = 500
  class_dropout: float = 0.1  # probability of the null class (classifier-free guidance)
  cond_frames: int = 0  # known leading frames given to a frame-conditioned model (BAIR: 1)
  cond_dropout: float = 0.1  # probability of dropping the conditioning frames
  progress_bar: bool = True
  init_from: str | None = None  # a finished run whose shared params start a fresh one (train/inflate.py)

  def __post_init__(self):
    check_ranges("train", self, {
        "global_batch_size": AT_LEAST_1,
        "num_steps": (AT_LEAST_1[0], ">= 1 (the steps to train; 0 would train nothing)"),
        "seed": AT_LEAST_0, "log_every": AT_LEAST_1,
        "sample_every": (AT_LEAST_0[0], ">= 0 (0: sample only at the end)"),
        "checkpoint_every": AT_LEAST_1, "class_dropout": PROBABILITY, "cond_frames": AT_LEAST_0,
        "cond_dropout": PROBABILITY})


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axes (data, fsdp, tensor); exactly one may be -1 (fills the remaining devices)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    check_ranges("mesh", self, {name: (lambda v: v == -1 or v >= 1, ">= 1, or -1 (fill)")
                                for name in ("data", "fsdp", "tensor")})
    if [self.data, self.fsdp, self.tensor].count(-1) > 1:
      raise ValueError(f"mesh data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}: at most one "
                       "size may be -1 (fill the remaining devices); set the others with --config.mesh")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  max_to_keep: int = 3
  async_save: bool = True

  def __post_init__(self):
    check_ranges("checkpoint", self, {"max_to_keep": AT_LEAST_1})


@dataclasses.dataclass(frozen=True)
class SampleConfig(SamplerConfig):
  """Samples written during training, and sample.py's defaults for this run.

  The sampler fields (sampler, num_steps, eta, gamma, clip_x, corrector_steps, corrector_delta)
  are `diffusion.SamplerConfig`'s, inherited: the one definition of sampler settings.
  """
  num_samples: int = 8
  guidance_weight: float = 0.0
  fps: int = 8

  def __post_init__(self):
    super().__post_init__()
    check_ranges("sample", self, {"num_samples": AT_LEAST_1, "guidance_weight": FINITE,
                                  "fps": AT_LEAST_1})

  def sampler_config(self) -> SamplerConfig:
    """The SamplerConfig part of this section."""
    return SamplerConfig(**{f.name: getattr(self, f.name)
                            for f in dataclasses.fields(SamplerConfig)})


SECTIONS = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig,
            "optim": OptimConfig, "train": TrainConfig, "mesh": MeshConfig,
            "checkpoint": CheckpointConfig, "sample": SampleConfig, "distill": DistillConfig,
            "cascade": CascadeConfig}


def unknown_names_message(where: str, unknown: Sequence[str], known: Sequence[str],
                          kind: str = "keys") -> str:
  """One line: the unknown names, the nearest known one of each, and every known name."""
  hints = []
  for name in unknown:
    close = difflib.get_close_matches(name, known, n=1)
    nearest = close or difflib.get_close_matches(name, known, n=1, cutoff=0.0)
    hint = f"did you mean {close[0]!r}?" if close else f"nearest: {nearest[0]!r}" if nearest else ""
    hints.append(f"{name!r}: {hint}" if len(unknown) > 1 else hint)
  return (f"{where} has unknown {kind} {sorted(unknown)} ({'; '.join(hints)}); known {kind}: "
          f"{sorted(known)}")


def _section(name: str, cls: type, values: Any):
  values = dict(values or {})
  known = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ConfigError(unknown_names_message(f"config.{name}", unknown, known))
  try:
    return cls(**values)
  except (ValueError, TypeError) as err:
    message = str(err)
    raise ConfigError(message if message.startswith(f"{name}.") else f"config.{name}: {message}"
                      ) from err


def check_overrides(args: Sequence[str], flag: str = "config") -> None:
  """ConfigError (one line) if a --config.<section>.<key> argument names an unknown section or key.

  For entry scripts, before absl parses the flags: ml_collections' own check of a locked config
  ends in chained tracebacks without the known keys.
  """
  pattern = re.compile(rf"^--?(?:no)?{re.escape(flag)}\.([^=]+)")
  for arg in args:
    if arg == "--":
      break
    match = pattern.match(arg)
    if not match:
      continue
    section, _, rest = match.group(1).partition(".")
    if section not in SECTIONS:
      raise ConfigError(unknown_names_message(flag, [section], list(SECTIONS), "sections"))
    key = rest.split(".")[0]
    known = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if rest and key not in known:
      raise ConfigError(unknown_names_message(f"{flag}.{section}", [key], known))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  data: DataConfig
  model: ModelConfig
  diffusion: DiffusionConfig
  optim: OptimConfig
  train: TrainConfig
  mesh: MeshConfig
  checkpoint: CheckpointConfig
  sample: SampleConfig
  distill: DistillConfig = DistillConfig()
  cascade: CascadeConfig = CascadeConfig()

  @classmethod
  def from_config_dict(cls, config: Any) -> ExperimentConfig:
    """From an ml_collections ConfigDict (or a dict of dicts); missing sections take defaults."""
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(as_dict) - set(SECTIONS))
    if unknown:
      raise ConfigError(unknown_names_message("config", unknown, list(SECTIONS), "sections"))
    return cls(**{name: _section(name, c, as_dict.get(name)) for name, c in SECTIONS.items()})

  def to_dict(self) -> dict:
    return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def base_config():
  """A ConfigDict holding every section with every field at its default.

  Config files start from it and change what they need, so each field can be overridden from the
  command line (--config.train.num_steps=...) and tuples stay tuples.
  """
  import ml_collections

  def section(cls):
    # A None default becomes a typed placeholder, so --config.data.data_dir=DIR can set it.
    return {k: ml_collections.config_dict.placeholder(str) if v is None else v
            for k, v in dataclasses.asdict(cls()).items()}

  return ml_collections.ConfigDict({name: section(cls) for name, cls in SECTIONS.items()})


def cpu_recipe(config) -> None:
  """The training recipe of the CPU configs (default, default_dit, cascade stages), in place:
  v-prediction with v-MSE, Adam 2e-3 with 50 warmup steps and cosine decay, EMA 0.99, 3,000 steps
  of batch 8, one device per core (data parallel), checkpoints every 250 steps."""
  config.diffusion.update(prediction="v", weighting="v", logsnr_min=-20.0, logsnr_max=20.0,
                          time_sampling="low_discrepancy")
  config.optim.update(optimizer="adam", learning_rate=2e-3, b2=0.99, warmup_steps=50,
                      schedule="cosine", grad_clip_norm=1.0, ema_decay=0.99)
  config.train.update(global_batch_size=8, num_steps=3000, seed=0, log_every=50, sample_every=1000,
                      checkpoint_every=250)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  config.checkpoint.update(max_to_keep=3, async_save=True)


def shrink_to_tiny(config) -> None:
  """Turns a config into its `tiny` variant in place: the same pipeline, data and conditioning
  (classes, conditioning frames, image frames), at a size that trains end to end in a minute or two
  on a CPU (8 frames of 16x16, a 2-level 16-channel U-Net or a 2-block 32-wide DiT, a few steps)."""
  config.data.update(num_frames=8, resolution=16, frame_stride=1)
  config.model.update(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=8,
                      attention_resolutions=(8,), image_size=16, head_dim=16, num_heads=0, emb_dim=0,
                      dropout=0.0, dtype="float32", remat="none", hidden_size=32, depth=2,
                      attention_impl="reference")
  config.train.update(global_batch_size=8, num_steps=6, log_every=2, sample_every=4,
                      checkpoint_every=3, progress_bar=False,
                      cond_frames=min(config.train.cond_frames, 2))
  config.optim.update(warmup_steps=2, grad_accum_steps=1)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  config.sample.update(num_samples=8, num_steps=4)


def _mesh_sizes(mesh: MeshConfig, num_devices: int) -> dict[str, int]:
  """The axis sizes with the -1 (if any) filled from the devices present."""
  sizes = dataclasses.asdict(mesh)  # each >= 1, or one -1: MeshConfig checked them
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  return {k: (max(num_devices // fixed, 1) if v == -1 else v) for k, v in sizes.items()}


def _check_mesh(exp: ExperimentConfig, num_devices: int, num_processes: int) -> None:
  """The mesh fits the devices; the batch divides over its batch axes, processes, micro-batches."""
  mesh = dataclasses.asdict(exp.mesh)
  sizes = list(mesh.values())
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if num_devices % fixed or (-1 not in sizes and fixed != num_devices):
    raise ValueError(f"mesh {mesh} does not fit the {num_devices} devices present; set e.g. "
                     f"--config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1")
  batch_devices = num_batch_devices(_mesh_sizes(exp.mesh, num_devices))
  gbs = exp.train.global_batch_size
  if gbs % batch_devices:
    raise ValueError(f"train.global_batch_size={gbs} does not divide over the {batch_devices} "
                     "data-parallel devices (mesh data x fsdp); choose a multiple")
  if gbs % num_processes:
    raise ValueError(f"train.global_batch_size={gbs} does not divide over {num_processes} processes")
  accum = exp.optim.grad_accum_steps
  if gbs % accum or (gbs // accum) % batch_devices:
    raise ValueError(f"train.global_batch_size={gbs} must split into optim.grad_accum_steps="
                     f"{accum} micro-batches that divide over {batch_devices} devices")


def _check_model_fits_data(exp: ExperimentConfig, info: DatasetInfo) -> None:
  """Channels, classes and conditioning frames of the model agree with the dataset's."""
  if exp.model.prediction != exp.diffusion.prediction:
    raise ValueError(f"model.prediction={exp.model.prediction!r} and diffusion.prediction="
                     f"{exp.diffusion.prediction!r} differ; set both to the same target")
  exp.model.validate(exp.data.num_frames + exp.data.image_frames, exp.data.resolution,
                     exp.data.resolution, image_frames=exp.data.image_frames)
  if exp.model.in_channels != info.channels or exp.model.out_channels != info.channels:
    raise ValueError(f"dataset {info.name!r} has {info.channels} channels but model.in_channels="
                     f"{exp.model.in_channels}, model.out_channels={exp.model.out_channels}; set "
                     f"both to {info.channels}")
  if exp.model.num_classes and info.num_classes == 0:
    raise ValueError(f"model.num_classes={exp.model.num_classes} but dataset {info.name!r} has no "
                     "labels; set model.num_classes=0")
  if exp.model.num_classes and info.num_classes > exp.model.num_classes:
    raise ValueError(f"dataset {info.name!r} has {info.num_classes} classes; set "
                     f"model.num_classes >= {info.num_classes}")
  missing = [n for n in exp.model.micro_conditioning if n not in info.micro_medians]
  if missing:
    raise ValueError(f"model.micro_conditioning={exp.model.micro_conditioning} but dataset {info.name!r} "
                     f"stores no {missing}; use a dataset that does (moving_shapes_speeds, folder/<name>)")
  if exp.train.cond_frames:
    if exp.model.cond_channels != info.channels:
      raise ValueError(f"train.cond_frames={exp.train.cond_frames} needs model.cond_channels="
                       f"{info.channels} (the dataset's channels); got {exp.model.cond_channels}")
    if exp.train.cond_frames >= exp.data.num_frames:
      raise ValueError(f"train.cond_frames={exp.train.cond_frames} must be < data.num_frames="
                       f"{exp.data.num_frames}")
  elif exp.model.cond_channels:
    raise ValueError("model.cond_channels > 0 needs train.cond_frames > 0 (how many frames are "
                     "given)")
  if exp.sample.guidance_weight and not (exp.model.num_classes or exp.model.cond_channels):
    raise ValueError("sample.guidance_weight != 0 needs a class- or frame-conditioned model")


def _check_batch_fits_data(exp: ExperimentConfig, info: DatasetInfo) -> None:
  """A global batch no larger than the training split (each batch holds distinct examples)."""
  gbs, n = exp.train.global_batch_size, info.num_train_examples
  if gbs > n:
    raise ValueError(f"train.global_batch_size={gbs} is larger than the {n} training examples of "
                     f"{info.name!r} (split {exp.data.train_split!r}); lower "
                     f"--config.train.global_batch_size to at most {n}")


def _check_host_memory(exp: ExperimentConfig, info: DatasetInfo, num_devices: int,
                       num_processes: int) -> None:
  """One float32 host batch, plus (devices on the CPU: their memory is the host's) the state."""
  d = exp.data
  clip = (d.num_frames + d.image_frames) * d.resolution * d.resolution * info.channels * 4
  batch = exp.train.global_batch_size // num_processes * clip
  state = 0.0
  if jax.default_backend() == "cpu":
    mesh = _mesh_sizes(exp.mesh, num_devices)
    per_device = count_params(exp.model) * 4 * 4 / (mesh["fsdp"] * mesh["tensor"])
    state = per_device * max(num_devices // num_processes, 1)  # params, EMA, 2 Adam moments
  check_fits_in_memory(
      batch + state, f"training with train.global_batch_size={exp.train.global_batch_size} ("
      f"{batch / 2**30:.1f} GiB per host batch, B x T x H x W x C x 4 bytes; {state / 2**30:.1f} GiB "
      "of parameters, EMA and Adam moments on CPU devices)", "lower --config.train.global_batch_size, "
      "or shrink the model or shard it with --config.mesh.fsdp")


def validate_experiment(exp: ExperimentConfig, info: DatasetInfo, num_devices: int,
                        num_processes: int) -> None:
  """Every check that needs no compilation; ConfigError says in one line what to change."""
  try:
    _check_mesh(exp, num_devices, num_processes)
    check_ranges("diffusion", exp.diffusion, {"min_snr_gamma": POSITIVE, "p_std": POSITIVE,
                                              "shift": FINITE, "shift_reference_size": AT_LEAST_0})
    _check_model_fits_data(exp, info)
    check_cascade(exp.cascade, exp.model.lowres_channels, info.channels, exp.data.num_frames,
                  exp.data.resolution, exp.data.image_frames)
    _check_batch_fits_data(exp, info)
    _check_host_memory(exp, info, num_devices, num_processes)
  except ConfigError:
    raise
  except ValueError as err:
    raise ConfigError(str(err)) from err
