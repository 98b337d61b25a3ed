"""What a cascade super-resolution stage samples from: its noised low-resolution conditioning.

`generate` calls `stage_input` for a model with model.lowres_channels > 0. The conditioning is the
previous stage's output already upsampled to this stage's shape (the cascade passes it), or else
the first N clips of the dataset's eval split degraded and upsampled back (what the trainer's
periodic samples and a lone `sample.py --workdir` of a stage super-resolve). Either way it is
noised at one fixed augmentation level (vdm_jax.superres.augment), each sample's noise depending
only on the seed and its index.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from vdm_jax import data, superres
from vdm_jax.config import ExperimentConfig
from vdm_jax.generation.plan import GenerateOptions, Plan
from vdm_jax.generation.sampler import per_sample_noise

# Folded into the seed's key for the augmentation noise (the sampler's streams use the key itself).
_AUG_STREAM = 0x5e


@dataclasses.dataclass(frozen=True)
class StageInput:
  """A super-resolution stage's conditioning for N samples.

  Attributes:
    lowres: float32 [N, T, H, W, C], upsampled to the stage's shape and noised at aug_level.
    aug_level: the augmentation level (normalised noise level in [0, 1]).
    source: "previous stage", or the dataset split the clips were degraded from.
    labels: [N] dataset labels of those clips, else None.
    ground_truth: float32 [N, T, H, W, C] the clips themselves, else None.
  """
  lowres: np.ndarray
  aug_level: float
  source: str
  labels: np.ndarray | None = None
  ground_truth: np.ndarray | None = None


def stage_input(exp: ExperimentConfig, opts: GenerateOptions, p: Plan, lowres: np.ndarray | None,
                aug_level: float | None) -> StageInput | None:
  """The conditioning of a super-resolution stage (None for any other model).

  Args:
    exp, opts, p: the stage's config, options and plan.
    lowres: [N, T, H, W, C] in [-1, 1], the previous stage's output upsampled to this stage's
      shape (superres.upsample_for); None -> degraded clips of the dataset's eval split.
    aug_level: None -> the config's cascade.sample_aug_level.

  Raises:
    ValueError: lowres for a model that takes none, of the wrong shape, an extension, a level
      outside [0, 1].
  """
  if not exp.model.lowres_channels:
    if lowres is not None or aug_level is not None:
      raise ValueError("a low-resolution video / aug_level was given but this model is not a "
                       "cascade super-resolution stage (model.lowres_channels=0)")
    return None
  level = exp.cascade.sample_aug_level if aug_level is None else float(aug_level)
  if not 0 <= level <= 1:
    raise ValueError(f"aug_level={level} must be in [0, 1]")
  if p.total_frames != p.train_frames or p.cond_frames:
    raise ValueError("a super-resolution stage samples its own length only: drop --num_frames and "
                     "--cond_frames")
  n = opts.num_samples
  want = (n,) + p.shape[:3] + (exp.model.lowres_channels,)
  labels = truth = None
  if lowres is None:
    truth, labels = _eval_clips(exp, opts, p)
    lowres = np.asarray(superres.lowres_of(truth, exp.cascade))
    source = f"{exp.data.name}/{opts.cond_split or exp.data.eval_split} degraded"
  else:
    source = "previous stage"
  if tuple(lowres.shape) != want:
    raise ValueError(f"the low-resolution video is {tuple(lowres.shape)} but this stage takes {want}")
  noise = per_sample_noise(jax.random.fold_in(jax.random.key(opts.seed), _AUG_STREAM), 0, want)
  noised = superres.augment(lowres, np.full((n,), level, np.float32), noise)
  return StageInput(np.asarray(noised, np.float32), level, source, labels, truth)


def _eval_clips(exp: ExperimentConfig, opts: GenerateOptions, p: Plan
                ) -> tuple[np.ndarray, np.ndarray]:
  """The first N clips of the eval split at the stage's shape: (video [N, T, H, W, C], labels)."""
  n = opts.num_samples
  config = dataclasses.replace(exp.data, num_frames=p.train_frames, image_frames=0,
                               eval_split=opts.cond_split or exp.data.eval_split)
  batch = next(iter(data.create_eval_iterator(config, n, num_examples=n)))
  return np.asarray(batch["video"], np.float32), np.asarray(batch["label"], np.int32)
