"""Classifier-free guidance and reconstruction guidance (docs/MATH.md section 6).

Classifier-free (Ho & Salimans 2022): pred = (1 + w) pred_c - w pred_u, the conditional and unconditional
halves evaluated in one batched call. w may vary over frames (SVD-style rising guidance).

Reconstruction guidance (VDM section 3.1), to sample unknown frames b given known frames a:
    x_tilde^b = x_hat^b - (w_r alpha_t / 2) grad_{z^b} || x^a - x_hat^a(z_t) ||^2
and after every step the known frames of z_s are replaced by a fresh forward sample
alpha_s x^a + sigma_s eps (`replace_known_frames`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion.protocols import DenoiseFn
from vdm_jax.diffusion.samplers import PostStepFn, PredictFn, clip_prediction
from vdm_jax.diffusion.schedule import alpha_sigma


def frame_guidance_weights(w_start: float, w_end: float, num_frames: int) -> jax.Array:
  """Guidance weight per frame rising linearly from w_start to w_end (SVD: 1.0 -> 2.5 in its w + 1)."""
  return jnp.linspace(w_start, w_end, num_frames, dtype=jnp.float32)


def _broadcast_weight(w: float | jax.Array, pred: jax.Array) -> jax.Array:
  """Scalar w, or per-frame w [T] broadcast against [B, T, ...]."""
  w = jnp.asarray(w, jnp.float32)
  if w.ndim == 0:
    return w
  if w.ndim != 1 or w.shape[0] != pred.shape[1]:
    raise ValueError(f"per-frame guidance weights must have shape [T={pred.shape[1]}], got {w.shape}")
  return w.reshape((1, -1) + (1,) * (pred.ndim - 2))


def classifier_free_guidance(denoise_fn: DenoiseFn, guidance_weight: float | jax.Array,
                             null_cond: Any) -> DenoiseFn:
  """Wrap denoise_fn so it returns (1 + w) pred(cond) - w pred(null_cond), in one batched call.

  Args:
    denoise_fn: (z [B, ...], logsnr [B], cond) -> prediction.
    guidance_weight: w, a scalar or per-frame weights [T].
    null_cond: conditioning of the same tree structure as cond with the condition dropped
      (e.g. labels = num_classes, the null class), or a function cond -> null_cond.
  """

  def guided(z, logsnr, cond):
    uncond = null_cond(cond) if callable(null_cond) else null_cond
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)
    pred = denoise_fn(jnp.concatenate([z, z], axis=0), jnp.concatenate([logsnr, logsnr], axis=0),
                      both)
    pred_c, pred_u = jnp.split(pred, 2, axis=0)
    return pred_c + _broadcast_weight(guidance_weight, pred_c) * (pred_c - pred_u)

  return guided


def _frame_mask(known_mask: jax.Array, x: jax.Array) -> jax.Array:
  """known_mask [B, T] (1 = known frame) -> float mask broadcastable to x [B, T, H, W, C]."""
  return known_mask.astype(jnp.float32).reshape(known_mask.shape + (1,) * (x.ndim - 2))


def reconstruction_guidance(predict_fn: PredictFn, x_known: jax.Array, known_mask: jax.Array,
                            guidance_weight: float, *, clip_x: bool = True) -> PredictFn:
  """A predict_fn whose x_hat is corrected toward the known frames (VDM eq. 7).

  Args:
    predict_fn: the model's (z, logsnr) -> (x_hat, eps_hat), built WITHOUT clipping (clipping would
      zero the gradient); clipping is applied here after the correction.
    x_known: [B, T, H, W, C] video whose frames are valid where known_mask is 1.
    known_mask: [B, T] 1.0 for known (a) frames, 0.0 for frames to generate (b).
    guidance_weight: w_r (VDM: 50 on BAIR, 9 on Kinetics); 0 leaves x_hat^b unchanged.
    clip_x: clip the corrected x_hat to [-1, 1].

  Returns:
    predict_fn(z, logsnr) -> (x_tilde, eps_tilde), x_tilde equal to x_known on the known frames.
  """
  mask = _frame_mask(known_mask, x_known)

  def guided_predict_fn(z, logsnr):
    logsnr = jnp.broadcast_to(logsnr, z.shape[:1])
    alpha, sigma = alpha_sigma(logsnr)

    def recon_error(z_in):
      x_hat, _ = predict_fn(z_in, logsnr)
      return jnp.sum(mask * jnp.square(x_known - x_hat)), x_hat

    grad, x_hat = jax.grad(recon_error, has_aux=True)(z)
    x_tilde = x_hat - 0.5 * guidance_weight * param.broadcast_to(alpha, z) * grad
    x_tilde = mask * x_known + (1.0 - mask) * x_tilde
    if clip_x:
      return clip_prediction(x_tilde, z, alpha, sigma)
    return x_tilde, param.eps_from_x(z, x_tilde, alpha, sigma)

  return guided_predict_fn


def replace_known_frames(x_known: jax.Array, known_mask: jax.Array) -> PostStepFn:
  """post_step_fn setting the known frames of z_s to alpha_s x^a + sigma_s eps (x^a itself at the end)."""
  mask = _frame_mask(known_mask, x_known)

  def post_step_fn(z_s, logsnr_s, rng, is_last):
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    noised = alpha_s * x_known + sigma_s * jax.random.normal(rng, z_s.shape, z_s.dtype)
    known = jnp.where(is_last, x_known, noised)
    return mask * known + (1.0 - mask) * z_s

  return post_step_fn
