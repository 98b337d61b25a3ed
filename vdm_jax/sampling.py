"""Sampling from a trained U-Net: the jitted sampler used by training and by sample.py.

Joins the model (through train/denoiser.py) and the diffusion core's samplers and guidance;
knows nothing of the training loop.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from vdm_jax import diffusion
from vdm_jax.train.denoiser import make_denoise_fn, null_cond


def make_sample_fn(graphdef: nnx.GraphDef, rest: nnx.State, *, schedule: diffusion.CosineSchedule,
                   sampler_config: diffusion.SamplerConfig, prediction: str = "v",
                   num_classes: int = 0, guidance_weight: float | jax.Array = 0.0
                   ) -> Callable[[nnx.State, jax.Array, jax.Array, dict], jax.Array]:
  """sample_fn(params, rng, z, cond) -> x in [-1, 1], z the initial noise [B, T, H, W, C].

  Guidance (classifier-free, weight w; scalar or per-frame [T]) is applied when w != 0 and the
  model is class- or frame-conditioned. Pure: jit it, with z sharded over the batch axis.
  """
  use_cfg = not (isinstance(guidance_weight, (int, float)) and guidance_weight == 0.0)

  def sample_fn(params: nnx.State, rng: jax.Array, z: jax.Array, cond: dict[str, Any]) -> jax.Array:
    denoise_fn = make_denoise_fn(graphdef, params, rest)
    if use_cfg:
      denoise_fn = diffusion.classifier_free_guidance(
          denoise_fn, guidance_weight, lambda c: null_cond(c, num_classes))
    predict_fn = diffusion.make_predict_fn(denoise_fn, cond, prediction=prediction,
                                           clip_x=sampler_config.clip_x)
    return diffusion.sample_loop(predict_fn, z, rng, schedule=schedule, config=sampler_config)

  return sample_fn
