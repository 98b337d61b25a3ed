"""The jitted sampler: a chunk of the step loop, with guidance and known frames, for any denoiser.

Joins vdm_jax.denoiser (the U-Net as a DenoiseFn) and the diffusion core's sample loop and guidance.
One compiled chunk function serves every chunk, block, batch and seed of a shape: start/stop are
traced, so progress can be logged between chunks without compiling again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax import diffusion
from vdm_jax.denoiser import Conditioning, DenoiseFn, make_denoise_fn, null_cond

FRAME_METHODS = ("model", "reconstruction", "replacement")
# chunk_fn(params, carry, rng, cond, x_known, known_mask, start, stop) -> the carry after steps
# [start, stop); the carry is z (diffusion.initial_carry; (z, x_prev) for a multistep sampler).
ChunkFn = Callable[..., jax.Array]


def make_chunk_fn(graphdef: nnx.GraphDef, rest: nnx.State, **kwargs: Any) -> ChunkFn:
  """chunk_fn(params, z, rng, cond, x_known, known_mask, start, stop) for the U-Net (graphdef, rest).

  See `make_chunk_fn_from_denoiser` for the keyword arguments and the chunk_fn's.
  """
  return make_chunk_fn_from_denoiser(lambda params: make_denoise_fn(graphdef, params, rest),
                                     **kwargs)


def _guided(denoise_fn: DenoiseFn, guidance_weight: float | jax.Array,
            num_classes: int) -> DenoiseFn:
  """Classifier-free guidance around denoise_fn, unless the weight is the constant 0."""
  if isinstance(guidance_weight, (int, float)) and guidance_weight == 0.0:
    return denoise_fn
  return diffusion.classifier_free_guidance(denoise_fn, guidance_weight,
                                            lambda c: null_cond(c, num_classes))


def make_chunk_fn_from_denoiser(make_denoise: Callable[[Any], DenoiseFn], *,
                                schedule: diffusion.CosineSchedule,
                                sampler_config: diffusion.SamplerConfig, prediction: str = "v",
                                num_classes: int = 0, guidance_weight: float | jax.Array = 0.0,
                                frame_method: str | None = None,
                                reconstruction_weight: float = 0.0) -> ChunkFn:
  """chunk_fn(params, z, rng, cond, x_known, known_mask, start, stop) -> z after steps [start, stop).

  Runs loop iterations [start, stop) of `sampler_config.num_steps` (the last returns x in [-1, 1]);
  start/stop are traced, so one compilation serves every chunk, block and seed of a shape.

  Args:
    make_denoise: params -> denoise_fn(z, logsnr [B], cond) -> prediction (called inside jit).
    schedule, sampler_config, prediction: the diffusion process and the sampler.
    num_classes: the model's class count (the null class for classifier-free guidance).
    guidance_weight: classifier-free w, a scalar or per-frame weights [T]; 0 disables it.
    frame_method: how known frames steer the unknown ones: None or "model" (only through the
      model's conditioning channels, `cond`), "reconstruction" (VDM 3.1 guidance with weight
      `reconstruction_weight`, plus replacement), "replacement" (known frames of z replaced by a
      forward sample after each step). docs/MATH.md section 6.
    reconstruction_weight: w_r for "reconstruction".

  chunk_fn arguments: params (what make_denoise takes), z: the loop carry,
  `diffusion.initial_carry(noise [B, T, H, W, C], sampler_config)` at start 0 (z itself for DDIM
  and ancestral, (z, x_prev) for dpmpp2m; `diffusion.carry_sample` reads z from it), rng
  (key), cond (Conditioning), x_known [B, T, H, W, C] in [-1, 1] (valid where known), known_mask
  [B, T] float (1 = known), start / stop int32 scalars.
  """
  if frame_method not in (None,) + FRAME_METHODS:
    raise ValueError(f"frame_method={frame_method!r}; choose one of {FRAME_METHODS}")
  guide = frame_method == "reconstruction"
  replace = frame_method in ("reconstruction", "replacement")

  def chunk_fn(params: Any, z: jax.Array, rng: jax.Array, cond: Conditioning | None,
               x_known: jax.Array, known_mask: jax.Array, start: jax.Array,
               stop: jax.Array) -> jax.Array:
    denoise_fn = _guided(make_denoise(params), guidance_weight, num_classes)
    # Reconstruction guidance needs the unclipped x_hat (clipping zeroes its gradient); it clips.
    predict_fn = diffusion.make_predict_fn(denoise_fn, cond, prediction=prediction,
                                           clip_x=sampler_config.clip_x and not guide)
    if guide:
      predict_fn = diffusion.reconstruction_guidance(predict_fn, x_known, known_mask,
                                                     reconstruction_weight,
                                                     clip_x=sampler_config.clip_x)
    post_step_fn = diffusion.replace_known_frames(x_known, known_mask) if replace else None
    return diffusion.sample_loop(predict_fn, z, rng, schedule=schedule, config=sampler_config,
                                 start=start, stop=stop, post_step_fn=post_step_fn)

  return chunk_fn


def per_sample_noise(rng: jax.Array, first: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """N(0, I) noise [B, ...] whose row i depends only on rng and the sample index first + i."""
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(shape[0]))
  return jax.vmap(lambda key: jax.random.normal(key, shape[1:], jnp.float32))(keys)
