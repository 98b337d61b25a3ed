"""What to generate: the options, their defaults from the run's config, and the checks.

`plan()` turns GenerateOptions into a Plan (every default filled in) and rejects options the model
cannot take before anything is read or compiled; `conditioning_clips()` fetches the known frames.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from vdm_jax import data, diffusion
from vdm_jax.config import ExperimentConfig
from vdm_jax.generation.sampler import FRAME_METHODS
from vdm_jax.metrics import video_io
from vdm_jax.model.config import MICRO_CONDITIONING  # also GenerateOptions' field names
from vdm_jax.parallel.host import check_fits_in_memory

SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(diffusion.SamplerConfig))


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
  """What generate() samples; each field but `sampling` is a sample.py flag of the same name.

  Attributes:
    num_samples: N videos.
    sampling: the sampler (diffusion.SamplerConfig); None -> the run config's sample section (a
      distilled student's: DDIM with the steps it was trained for, `default_sampler_config`).
      sample.py's sampler flags (--sampler, --num_steps, --eta, ...) override single fields.
    seed: a sample's initial noise depends only on the seed and its index, so DDIM (eta 0) gives
      the same samples for any batch size and device count; stochastic samplers' step noise also
      depends on the batch size.
    guidance_weight: classifier-free w (class- or frame-conditioned models only); None -> the
      config's sample.guidance_weight.
    guidance_weight_end: if set, w rises linearly over the frames from guidance_weight to this.
    labels: class labels for a class-conditional model, one per sample or one for all; default
      the dataset labels of the conditioning clips, else i % num_classes.
    cond_frames: k known leading frames; None -> train.cond_frames of a frame-conditioned model,
      else 0.
    cond_video: a video file whose first k frames condition every sample; None -> the first N
      clips of the dataset split `cond_split` (default the config's eval split).
    frame_method: "model" (conditioning channels), "reconstruction" or "replacement"; None ->
      "model" for a model with conditioning-frame channels, else "reconstruction".
    reconstruction_weight: w_r of reconstruction guidance (VDM: 50 on BAIR, 9 on Kinetics).
    num_frames: total frames; longer than the training length -> autoregressive extension.
    overlap: frames of the previous block each extension block is conditioned on; None -> the
      cond frames of a frame-conditioned model, else half the training length.
    batch_size: videos per compiled call (rounded up to divide over the devices); None -> N.
    progress_chunks: the step loop runs in this many jitted chunks, logging after each.
    motion: the motion score every sample is conditioned on (data.curation.motion_score: pixels
      per second at 64x64), for a model with "motion" in model.micro_conditioning; None -> the
      training set's median (data.dataset_info's micro_medians, also in the run's manifest).
    fps: the frame rate every sample is conditioned on, for a model with "fps" in
      model.micro_conditioning; None -> the training set's median.
  """
  num_samples: int = 8
  sampling: diffusion.SamplerConfig | None = None
  seed: int = 0
  guidance_weight: float | None = None
  guidance_weight_end: float | None = None
  labels: tuple[int, ...] | None = None
  cond_frames: int | None = None
  cond_video: str | None = None
  cond_split: str | None = None
  frame_method: str | None = None
  reconstruction_weight: float = 10.0
  num_frames: int | None = None
  overlap: int | None = None
  batch_size: int | None = None
  progress_chunks: int = 8
  motion: float | None = None
  fps: float | None = None


def options_from(exp: ExperimentConfig, **kwargs: Any) -> GenerateOptions:
  """GenerateOptions from flat keyword arguments: GenerateOptions fields and SamplerConfig fields.

  Sampler fields that are None keep the config's sample section's value.

  Raises:
    ValueError: an unknown keyword, listing the known ones.
  """
  option_names = {f.name for f in dataclasses.fields(GenerateOptions)} - {"sampling"}
  unknown = sorted(set(kwargs) - option_names - set(SAMPLER_FIELDS))
  if unknown:
    raise ValueError(f"unknown sampling options {unknown}; known: "
                     f"{sorted(option_names | set(SAMPLER_FIELDS))}")
  overrides = {k: kwargs.pop(k) for k in SAMPLER_FIELDS if k in kwargs}
  overrides = {k: v for k, v in overrides.items() if v is not None}
  if kwargs.get("labels") is not None:
    kwargs["labels"] = tuple(int(label) for label in kwargs["labels"])
  sampling = dataclasses.replace(default_sampler_config(exp), **overrides)
  return GenerateOptions(sampling=sampling, **kwargs)


def default_sampler_config(exp: ExperimentConfig) -> diffusion.SamplerConfig:
  """The run's sampler: its sample section, or for a progressive-distillation student the sampler
  it was trained for: DDIM (eta 0, no corrector) with distill.student_steps steps."""
  sampling = exp.sample.sampler_config()
  if exp.distill.enabled:
    sampling = dataclasses.replace(sampling, sampler="ddim", num_steps=exp.distill.student_steps,
                                   eta=0.0, corrector_steps=0)
  return sampling


@dataclasses.dataclass(frozen=True)
class Plan:
  """Resolved options: every default filled in and checked against the model."""
  sampler_config: diffusion.SamplerConfig
  guidance_weight: float
  train_frames: int  # T, the length of one block
  total_frames: int
  cond_frames: int
  frame_method: str | None
  overlap: int
  batch_size: int
  num_batches: int
  shape: tuple[int, int, int, int]  # [T, H, W, C]
  micro: tuple[tuple[str, float], ...] = ()  # (name, value) of each micro-conditioning scalar

  @property
  def num_blocks(self) -> int:
    """Blocks of T frames sampled per video: the first, then the extensions."""
    t, extra = self.train_frames, self.total_frames - self.train_frames
    return 1 if extra <= 0 else 1 + -(-extra // (t - self.overlap))


def plan(exp: ExperimentConfig, opts: GenerateOptions, num_devices: int,
         micro_medians: dict[str, float] | None = None) -> Plan:
  """Fills in defaults and rejects options the model cannot take, before anything compiles.

  Args:
    exp: the ExperimentConfig the model was trained with.
    opts: what to sample.
    num_devices: devices the batch is split over (the batch is rounded up to a multiple).
    micro_medians: the training set's micro-conditioning medians (the defaults of opts.motion /
      opts.fps), as the run's manifest records them; None -> read from the dataset when needed.

  Raises:
    ValueError: naming the option and what to change (also: samples that clearly cannot fit in
      this machine's memory).
  """
  w = exp.sample.guidance_weight if opts.guidance_weight is None else opts.guidance_weight
  _check_guidance(exp.model, opts, w)
  t = exp.data.num_frames
  k, total, method, overlap = _frame_plan(exp, opts)
  if opts.num_samples < 1 or opts.progress_chunks < 1 or (opts.batch_size or 1) < 1:
    raise ValueError(f"num_samples={opts.num_samples}, batch_size={opts.batch_size} and "
                     f"progress_chunks={opts.progress_chunks} must be >= 1")
  batch = min(opts.batch_size or opts.num_samples, opts.num_samples)
  batch = -(-batch // num_devices) * num_devices
  shape = (t, exp.data.resolution, exp.data.resolution, exp.model.out_channels)
  _check_sample_memory(opts.num_samples, total, shape)
  return Plan(opts.sampling or default_sampler_config(exp), float(w), t, total, k, method,
              overlap, batch, -(-opts.num_samples // batch), shape,
              micro_values(exp, opts, micro_medians))


def micro_values(exp: ExperimentConfig, opts: GenerateOptions,
                 medians: dict[str, float] | None = None) -> tuple[tuple[str, float], ...]:
  """(name, value) of each of the model's micro-conditioning scalars: the option, else the training
  set's median (`medians`, else data.dataset_info's). ValueError for a value the model was not
  trained with, or a negative one."""
  names = exp.model.micro_conditioning
  given = {n: getattr(opts, n) for n in MICRO_CONDITIONING if getattr(opts, n) is not None}
  extra = sorted(set(given) - set(names))
  if extra:
    raise ValueError(f"--{extra[0]} was given but the model was not trained with {extra[0]} "
                     f"conditioning (model.micro_conditioning={names}); drop --{extra[0]}")
  bad = {n: v for n, v in given.items() if not 0.0 <= v < float("inf")}
  if bad:
    raise ValueError(f"micro-conditioning values must be finite and >= 0, got {bad}")
  if set(names) - set(given):
    if not set(names) - set(given) <= set(medians or {}):
      medians = data.dataset_info(exp.data).micro_medians
    given.update({n: medians[n] for n in names if n not in given and n in medians})
  missing = [n for n in names if n not in given]
  if missing:
    raise ValueError(f"no default for {missing}: dataset {exp.data.name!r} stores none; pass "
                     f"--{missing[0]}")
  return tuple((n, float(given[n])) for n in names)


def _check_sample_memory(num_samples: int, total_frames: int, shape: tuple[int, ...]) -> None:
  """The N samples are held in host memory as float32: refuse a count that clearly cannot fit."""
  _, h, w, c = shape
  check_fits_in_memory(
      float(num_samples) * total_frames * h * w * c * 4,
      f"--num_samples={num_samples} ({total_frames} frames of {h}x{w}x{c}, N x frames x H x W x C "
      "x 4 bytes)", "lower --num_samples (and run again with another --seed for more samples)")


def _check_guidance(model: Any, opts: GenerateOptions, w: float) -> None:
  """Classifier-free guidance and labels only for models that were trained to take them."""
  conditional = bool(model.num_classes or model.cond_channels)
  if (w or opts.guidance_weight_end) and not conditional:
    raise ValueError("classifier-free guidance (guidance_weight != 0) needs a class- or "
                     "frame-conditioned model; this checkpoint's model is unconditional. Set "
                     "--guidance_weight=0 (frame conditioning uses --cond_frames).")
  if opts.labels is not None and not model.num_classes:
    raise ValueError("labels were given but the model is not class-conditional "
                     "(model.num_classes=0); drop --labels")
  if opts.labels is not None:
    bad = [label for label in opts.labels if not 0 <= label < model.num_classes]
    if bad or len(opts.labels) not in (1, opts.num_samples):
      raise ValueError(f"labels must be 1 or num_samples={opts.num_samples} values in "
                       f"[0, {model.num_classes}); got {list(opts.labels)}")


def _frame_plan(exp: ExperimentConfig, opts: GenerateOptions) -> tuple[int, int, str | None, int]:
  """(known frames k, total frames, frame method, extension overlap), defaults filled in."""
  model, t = exp.model, exp.data.num_frames
  k = opts.cond_frames if opts.cond_frames is not None else (
      exp.train.cond_frames if model.cond_channels else 0)
  total = opts.num_frames or t
  if not 0 <= k < t:
    raise ValueError(f"cond_frames={k} must be in [0, {t}) (the model's {t} frames per block)")
  if total <= k:
    raise ValueError(f"num_frames={total} must exceed cond_frames={k}")
  method = opts.frame_method
  if method is None and (k or total > t):
    method = "model" if model.cond_channels else "reconstruction"
  if method is not None and method not in FRAME_METHODS:
    raise ValueError(f"frame_method={method!r}; choose one of {FRAME_METHODS}")
  if method == "model" and not model.cond_channels:
    raise ValueError("frame_method='model' needs a model trained with conditioning-frame channels "
                     "(model.cond_channels > 0); use 'reconstruction' or 'replacement'")
  if method == "reconstruction" and opts.reconstruction_weight < 0:
    raise ValueError(f"reconstruction_weight must be >= 0, got {opts.reconstruction_weight}")
  overlap = opts.overlap or ((exp.train.cond_frames if model.cond_channels else 0) or t // 2)
  if total > t and not 1 <= overlap < t:
    raise ValueError(f"overlap={overlap} must be in [1, {t}) to extend past {t} frames")
  return k, total, method, overlap


def check_cond_video(opts: GenerateOptions) -> None:
  """FileNotFoundError before anything is read when --cond_video names no file."""
  if opts.cond_video and not os.path.isfile(opts.cond_video):
    raise FileNotFoundError(f"no conditioning video at {opts.cond_video!r}")


def conditioning_clips(exp: ExperimentConfig, opts: GenerateOptions, p: Plan
                       ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
  """(known [N, k, H, W, C] in [-1, 1], labels [N] or None, ground truth [N, L, ...] or None).

  From `opts.cond_video` (its first k frames, for every sample) or from the first N clips of the
  dataset split. Nothing is read when no frames are known.

  Raises:
    ValueError: the video has fewer than k frames or another resolution.
  """
  n, k = opts.num_samples, p.cond_frames
  if k == 0:
    return None, None, None
  if opts.cond_video:
    frames = _video_frames(opts.cond_video, k, p.shape)
    return np.broadcast_to(frames, (n,) + frames.shape).copy(), None, None
  length = p.total_frames
  info = data.dataset_info(exp.data)
  if not info.num_frames or info.num_frames < length:  # unknown or too short: one block's worth
    length = p.train_frames
  config = dataclasses.replace(exp.data, num_frames=length, image_frames=0,
                               eval_split=opts.cond_split or exp.data.eval_split)
  batch = next(iter(data.create_eval_iterator(config, n, num_examples=n)))
  video = np.asarray(batch["video"], np.float32)
  return video[:, :k], np.asarray(batch["label"], np.int32), video


def _video_frames(path: str, k: int, shape: tuple[int, ...]) -> np.ndarray:
  """The first k frames of a video file, float32 [k, H, W, C] in [-1, 1], checked against shape."""
  _, h, w, c = shape
  frames = video_io.read_video(path)  # uint8 [T, H, W, 3]
  if frames.shape[0] < k:
    raise ValueError(f"conditioning video {path} has {frames.shape[0]} frames but "
                     f"cond_frames={k} are needed; pass a longer video or lower --cond_frames")
  if frames.shape[1:3] != (h, w):
    raise ValueError(f"conditioning video {path} is {frames.shape[2]}x{frames.shape[1]} but "
                     f"the model samples {w}x{h}; resize it to {w}x{h}")
  if c == 1:
    frames = np.round(frames.mean(axis=-1, keepdims=True)).astype(np.uint8)
  return video_io.to_float(video_io.match_channels(frames[:k], c))


def labels_for(exp: ExperimentConfig, opts: GenerateOptions,
               data_labels: np.ndarray | None) -> np.ndarray | None:
  """[N] int32 labels for a class-conditional model, else None."""
  num_classes = exp.model.num_classes
  if not num_classes:
    return None
  if opts.labels is not None:
    return np.resize(np.asarray(opts.labels, np.int32), opts.num_samples)
  if data_labels is not None:
    return np.minimum(data_labels, num_classes - 1)
  return np.arange(opts.num_samples, dtype=np.int32) % num_classes
