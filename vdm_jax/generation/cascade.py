"""Sampling a cascade: a base run, then super-resolution stages, each conditioned on the one before.

Imagen Video / VDM cascades: the base model samples, each next stage (a run trained with a
`cascade` section and model.lowres_channels > 0) is conditioned on the previous stage's videos
upsampled to its shape (vdm_jax.superres.upsample_for, the same upsampling its training used) and
noised at a chosen augmentation level. Every stage goes through the one generation path
(`restore_model`, `generate`, `write_samples`); the chain is checked from the checkpoints'
manifests before anything is restored or compiled.

Output: OUTPUT_DIR/stage<i>/ holds each intermediate stage's files; OUTPUT_DIR itself holds the
final stage's (sample.npz, videos, protocol.json with the whole chain under "cascade").
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from vdm_jax import checkpoints, superres
from vdm_jax.config import ExperimentConfig
from vdm_jax.generation.plan import options_from, plan
from vdm_jax.generation.run import generate, restore_model, write_samples

# Options that steer how the base stage starts (known frames); the stages after it have none.
BASE_ONLY = ("cond_frames", "cond_video", "cond_split", "frame_method", "reconstruction_weight")
NOT_IN_CASCADE = ("num_frames", "overlap")


@dataclasses.dataclass(frozen=True)
class CascadeStage:
  """One run of the chain: its workdir, the config its checkpoint was trained with, the step."""
  workdir: str
  exp: ExperimentConfig
  step: int

  @property
  def output_shape(self) -> tuple[int, int, int, int]:
    """(T, H, W, C) of its samples."""
    d = self.exp.data
    return (d.num_frames, d.resolution, d.resolution, self.exp.model.out_channels)

  @property
  def input_shape(self) -> tuple[int, int, int, int]:
    """(T, H, W, C) of the previous stage's samples it takes (before upsampling)."""
    t, h, w, _ = self.output_shape
    c = self.exp.cascade
    return (t // c.temporal_factor, h // c.spatial_factor, w // c.spatial_factor,
            self.exp.model.lowres_channels)


def read_cascade(workdirs: Sequence[str], fallback: bool = True) -> list[CascadeStage]:
  """The stages' configs from their latest (intact) checkpoints' manifests; nothing restored."""
  stages = []
  for workdir in workdirs:
    exp, step, _ = checkpoints.read_experiment(workdir, None, fallback=fallback)
    stages.append(CascadeStage(workdir, exp, step))
  return stages


def check_chain(stages: Sequence[CascadeStage]) -> None:
  """ValueError (one line) unless each stage's output is the next stage's conditioning input."""
  if not stages:
    raise ValueError("a cascade needs at least one stage (a base run's workdir)")
  if stages[0].exp.model.lowres_channels:
    raise ValueError(f"the first cascade stage {stages[0].workdir} is a super-resolution stage "
                     "(model.lowres_channels > 0); put the base model's workdir first")
  for i, (prev, stage) in enumerate(zip(stages[:-1], stages[1:]), start=1):
    cascade = stage.exp.cascade
    if not stage.exp.model.lowres_channels or not cascade.is_stage:
      raise ValueError(f"cascade stage {i} ({stage.workdir}) is not a super-resolution stage "
                       "(model.lowres_channels=0 or cascade factors 1); only the first stage may "
                       "be a base model")
    if prev.output_shape != stage.input_shape:
      raise ValueError(
          f"cascade stage {i - 1} ({prev.workdir}) gives [T, H, W, C]={list(prev.output_shape)} but "
          f"stage {i} ({stage.workdir}) takes {list(stage.input_shape)} (its "
          f"{list(stage.output_shape[:3])} over cascade.temporal_factor={cascade.temporal_factor}, "
          f"spatial_factor={cascade.spatial_factor}, model.lowres_channels="
          f"{stage.exp.model.lowres_channels}); chain stages whose shapes match")


def aug_levels_for(stages: Sequence[CascadeStage], levels: Sequence[float] | None
                   ) -> list[float | None]:
  """Per stage: None for the base, else the given level (one for all, or one per SR stage)."""
  n = len(stages) - 1
  if not levels:
    return [None] + [s.exp.cascade.sample_aug_level for s in stages[1:]]
  if len(levels) not in (1, n):
    raise ValueError(f"give 1 augmentation level or one per super-resolution stage ({n}); got "
                     f"{len(levels)}")
  bad = [v for v in levels if not 0 <= v <= 1]
  if bad:
    raise ValueError(f"augmentation levels must be in [0, 1]; got {list(levels)}")
  return [None] + [float(v) for v in (list(levels) * n if len(levels) == 1 else levels)]


def _stage_options(stage: CascadeStage, index: int, options: dict[str, Any],
                   labels: Sequence[int] | None) -> dict[str, Any]:
  """The options a stage takes: base-only ones for stage 0, guidance and labels where supported."""
  model = stage.exp.model
  opts = {k: v for k, v in options.items() if index == 0 or k not in BASE_ONLY}
  if not (model.num_classes or model.cond_channels):
    opts.pop("guidance_weight", None)
    opts.pop("guidance_weight_end", None)
  opts["labels"] = labels if model.num_classes else None
  return opts


def plan_cascade(stages: Sequence[CascadeStage], num_samples: int, options: dict[str, Any]
                 ) -> list[Any]:
  """Each stage's GenerateOptions, checked against its model (plan) before anything compiles."""
  given = [k for k in NOT_IN_CASCADE if options.get(k) is not None]
  if given:
    raise ValueError(f"{given} cannot be used with a cascade (each stage samples its own length)")
  options = {k: v for k, v in options.items() if k not in NOT_IN_CASCADE}
  all_opts, labels = [], options.pop("labels", None)
  if labels is not None and not any(s.exp.model.num_classes for s in stages):
    raise ValueError("labels were given but no stage of the cascade is class-conditional; drop --labels")
  for i, stage in enumerate(stages):
    opts = options_from(stage.exp, num_samples=num_samples, **_stage_options(stage, i, options, labels))
    plan(stage.exp, opts, jax.device_count())
    all_opts.append(opts)
  return all_opts


def sample_cascade(workdirs: Sequence[str], output_dir: str | None = None, *,
                   aug_levels: Sequence[float] | None = None, num_samples: int = 8,
                   use_ema: bool = True, fallback: bool = True, fps: int | None = None,
                   **options: Any) -> tuple[str, dict[str, Any]]:
  """Samples the chain and (process 0) writes every stage's videos; see the module docstring.

  Args:
    workdirs: the base run's workdir, then each super-resolution stage's, in order.
    output_dir: where to write; None -> LAST_WORKDIR/samples/cascade_<step>_seed<seed>.
    aug_levels: the augmentation level of each super-resolution stage (one for all); None -> each
      stage's cascade.sample_aug_level.
    num_samples, use_ema, fallback, fps: as for `sample_and_save`.
    **options: GenerateOptions and SamplerConfig fields, applied to every stage that takes them
      (known-frame options to the base only; labels pass through to class-conditional stages).

  Returns:
    (output_dir, the final stage's protocol with the chain under "cascade").

  Raises:
    ValueError: stages that do not chain, or options a stage cannot take (before compiling).
  """
  stages = read_cascade(workdirs, fallback)
  check_chain(stages)
  levels = aug_levels_for(stages, aug_levels)
  all_opts = plan_cascade(stages, num_samples, options)
  output_dir = os.path.abspath(output_dir or os.path.join(
      workdirs[-1], "samples", f"cascade_{stages[-1].step:08d}_seed{all_opts[0].seed}"))
  videos, chain, protocol = None, [], {}
  for i, (stage, opts, level) in enumerate(zip(stages, all_opts, levels)):
    lowres = None if videos is None else np.asarray(superres.upsample_for(videos, stage.exp.cascade))
    if lowres is not None and stage.exp.model.num_classes and protocol.get("labels"):
      opts = dataclasses.replace(opts, labels=tuple(protocol["labels"]))
    model = restore_model(stage.workdir, stage.step, use_ema=use_ema, fallback=False)
    videos, protocol = generate(model, opts, lowres=lowres, aug_level=level)
    del model
    protocol.pop("ground_truth", None)
    last = i == len(stages) - 1
    stage_dir = output_dir if last else os.path.join(output_dir, f"stage{i}")
    protocol = {"workdir": os.path.abspath(stage.workdir), "cascade_stage": i, **protocol,
                "output_dir": stage_dir}
    chain.append(protocol)
    if jax.process_index() == 0:
      write_samples(stage_dir, videos, {**protocol, "cascade": chain} if last else protocol, fps=fps)
    logging.info("cascade stage %d/%d: %s written to %s", i + 1, len(stages),
                 list(videos.shape), stage_dir)
  return output_dir, {**protocol, "cascade": chain}
