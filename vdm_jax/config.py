"""The experiment config: typed sections, their validation, and workdir compatibility.

A config file (configs/*.py) builds on `base_config()` and returns an ml_collections.ConfigDict
with the sections data, model, diffusion, optim, train, mesh, checkpoint, sample;
`ExperimentConfig.from_config_dict` turns each into its frozen dataclass, rejecting unknown keys
with the list of known ones, and `validate_experiment` checks everything that needs no compilation.
Config files import only this module (never the trainer).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vdm_jax.data.config import DataConfig, DatasetInfo
from vdm_jax.diffusion import DiffusionConfig, SamplerConfig
from vdm_jax.model.config import UNetConfig
from vdm_jax.parallel.sharding import num_batch_devices

# Config sections that must match for a workdir's checkpoints to be resumed.
_COMPATIBLE_SECTIONS = ("model", "diffusion")
_COMPATIBLE_DATA_KEYS = ("name", "num_frames", "resolution", "image_frames")


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

  def __post_init__(self):
    if self.optimizer not in ("adam", "adamw"):
      raise ValueError(f"optim.optimizer={self.optimizer!r}: use 'adam' or 'adamw'")
    if self.schedule not in ("constant", "cosine"):
      raise ValueError(f"optim.schedule={self.schedule!r}: use 'constant' or 'cosine'")
    if self.learning_rate <= 0 or self.grad_accum_steps < 1 or self.warmup_steps < 0:
      raise ValueError("optim.learning_rate must be > 0, grad_accum_steps >= 1, warmup_steps >= 0")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"optim.ema_decay={self.ema_decay} must be in [0, 1)")


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


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axes (data, fsdp, tensor); exactly one may be -1 (fills the remaining devices)."""
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  max_to_keep: int = 3
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class SampleConfig(SamplerConfig):
  """Samples written during training, and sample.py's defaults for this run.

  The sampler fields (sampler, num_steps, eta, gamma, clip_x, corrector_steps, corrector_delta)
  are `diffusion.SamplerConfig`'s, inherited: the one definition of sampler settings.
  """
  num_samples: int = 8
  guidance_weight: float = 0.0
  fps: int = 8

  def sampler_config(self) -> SamplerConfig:
    """The SamplerConfig part of this section."""
    return SamplerConfig(**{f.name: getattr(self, f.name)
                            for f in dataclasses.fields(SamplerConfig)})


SECTIONS = {"data": DataConfig, "model": UNetConfig, "diffusion": DiffusionConfig,
            "optim": OptimConfig, "train": TrainConfig, "mesh": MeshConfig,
            "checkpoint": CheckpointConfig, "sample": SampleConfig}


def _section(name: str, cls: type, values: Any):
  values = dict(values or {})
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"config.{name} has unknown keys {unknown}; known keys: {sorted(known)}")
  return cls(**values)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  data: DataConfig
  model: UNetConfig
  diffusion: DiffusionConfig
  optim: OptimConfig
  train: TrainConfig
  mesh: MeshConfig
  checkpoint: CheckpointConfig
  sample: SampleConfig

  @classmethod
  def from_config_dict(cls, config: Any) -> ExperimentConfig:
    """From an ml_collections ConfigDict (or a dict of dicts); missing sections take defaults."""
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(as_dict) - set(SECTIONS))
    if unknown:
      raise ValueError(f"config has unknown sections {unknown}; known: {sorted(SECTIONS)}")
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


def shrink_to_tiny(config) -> None:
  """Turns a config into its `tiny` variant in place: the same pipeline, data and conditioning
  (classes, conditioning frames, image frames), at a size that trains end to end in a minute or two
  on a CPU (8 frames of 16x16, a 2-level 16-channel U-Net, a few steps)."""
  config.data.update(num_frames=8, resolution=16, frame_stride=1)
  config.model.update(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=8,
                      attention_resolutions=(8,), image_size=16, head_dim=16, num_heads=0, emb_dim=0,
                      dropout=0.0, dtype="float32", remat="none")
  config.train.update(global_batch_size=8, num_steps=6, log_every=2, sample_every=4,
                      checkpoint_every=3, progress_bar=False,
                      cond_frames=min(config.train.cond_frames, 2))
  config.optim.update(warmup_steps=2, grad_accum_steps=1)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  config.sample.update(num_samples=8, num_steps=4)


def _check_mesh(exp: ExperimentConfig, num_devices: int, num_processes: int) -> None:
  """The mesh fits the devices; the batch divides over its batch axes, processes, micro-batches."""
  mesh = dataclasses.asdict(exp.mesh)
  sizes = list(mesh.values())
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh {mesh}: sizes must be positive, with at most one -1 (fill)")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if num_devices % fixed or (-1 not in sizes and fixed != num_devices):
    raise ValueError(f"mesh {mesh} does not fit the {num_devices} devices present; set e.g. "
                     f"--config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1")
  batch_devices = num_batch_devices(
      {k: (num_devices // fixed if v == -1 else v) for k, v in mesh.items()})
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
                     exp.data.resolution)
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


def validate_experiment(exp: ExperimentConfig, info: DatasetInfo, num_devices: int,
                        num_processes: int) -> None:
  """Every check that needs no compilation; ValueError says what to change."""
  _check_mesh(exp, num_devices, num_processes)
  _check_model_fits_data(exp, info)


def check_workdir_compatible(manifest: dict, exp: ExperimentConfig, workdir: str) -> None:
  """The checkpoints in workdir must come from the same model, diffusion and data shapes."""
  saved = manifest.get("config", {})
  current = exp.to_dict()
  keys = [(section, key) for section in _COMPATIBLE_SECTIONS for key in current[section]]
  keys += [("data", key) for key in _COMPATIBLE_DATA_KEYS]
  diffs = []
  for section, key in keys:
    old, new = saved.get(section, {}).get(key), current[section][key]
    if _normalise(old) != _normalise(new):
      diffs.append(f"{section}.{key}: checkpoint {old!r} vs config {new!r}")
  if diffs:
    raise ValueError(f"workdir {workdir} holds checkpoints of an incompatible config:\n  "
                     + "\n  ".join(diffs)
                     + "\nUse a new --workdir, or the config the checkpoints were trained with.")


def _normalise(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value
