"""The diffusion training loss for any denoise_fn (docs/MATH.md section 4).

Every weighting is written as a weight w(lambda) on the x-space error ||x - x_hat||^2:

    v-MSE:  1 + SNR      eps-MSE:  SNR      x-MSE:  1
    truncated SNR:  max(SNR, 1)             min-SNR-gamma:  min(SNR, gamma)

The loss is computed as the MSE in the network's own output space (v, eps or x) times
w(lambda) / w_own(lambda), evaluated in log space, so v-prediction with v-MSE weighting is exactly
the plain v-MSE and no weight overflows at lambda = +-20.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion.protocols import DenoiseFn
from vdm_jax.diffusion.schedule import CosineSchedule, alpha_sigma, sample_training_logsnr

WEIGHTINGS = ("v", "eps", "x", "truncated_snr", "min_snr")
_OWN_WEIGHTING = {"v": "v", "eps": "eps", "x": "x"}


def log_weight(logsnr: jax.Array, weighting: str, min_snr_gamma: float = 5.0) -> jax.Array:
  """log w(lambda) of the x-space weighting named `weighting` (see module docstring)."""
  if weighting == "v":
    return jax.nn.softplus(logsnr)  # log(1 + e^lambda)
  if weighting == "eps":
    return logsnr
  if weighting == "x":
    return jnp.zeros_like(logsnr)
  if weighting == "truncated_snr":
    return jnp.maximum(logsnr, 0.0)
  if weighting == "min_snr":
    return jnp.minimum(logsnr, math.log(min_snr_gamma))
  raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")


def masked_mean(sq_err: jax.Array, frame_mask: jax.Array | None) -> jax.Array:
  """Per-example mean of sq_err [B, T, H, W, C] over the frames where frame_mask [B, T] is 1."""
  if frame_mask is None:
    return jnp.mean(sq_err, axis=tuple(range(1, sq_err.ndim)))
  mask = frame_mask.astype(sq_err.dtype)
  per_frame = jnp.mean(sq_err, axis=tuple(range(2, sq_err.ndim)))  # [B, T]
  return jnp.sum(per_frame * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def diffusion_loss(denoise_fn: DenoiseFn, x: jax.Array, rng: jax.Array, cond: Any = None, *,
                   schedule: CosineSchedule = CosineSchedule(), prediction: str = "v",
                   weighting: str = "v", min_snr_gamma: float = 5.0,
                   frame_mask: jax.Array | None = None, time_sampling: str = "uniform",
                   logsnr_sampling: str = "schedule", p_mean: float = -1.2,
                   p_std: float = 1.2) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-example diffusion loss of a denoiser on clean data.

  Args:
    denoise_fn: (z, logsnr, cond) -> prediction of kind `prediction`, same shape as z.
    x: clean data [B, T, H, W, C] in [-1, 1].
    rng: PRNG key (split here into time and noise keys).
    cond: anything the denoiser takes as conditioning (passed through unchanged).
    schedule: the noise schedule.
    prediction: "v" (default), "eps" or "x".
    weighting: one of WEIGHTINGS; "v" (default) with v-prediction is the plain v-MSE.
    min_snr_gamma: gamma of min-SNR weighting.
    frame_mask: optional [B, T], 1 where a frame counts (0 for known, conditioning frames).
    time_sampling, logsnr_sampling, p_mean, p_std: see `sample_training_logsnr`.

  Returns:
    loss [B] float32 and a dict of per-example metrics ([B] arrays): logsnr, mse (in the
    prediction's own space), x_mse.
  """
  param.check_prediction(prediction)
  log_weight(jnp.zeros(()), weighting)  # validates the name at trace time
  rng_t, rng_eps = jax.random.split(rng)
  batch = x.shape[0]
  logsnr = sample_training_logsnr(rng_t, batch, schedule, time_sampling=time_sampling,
                                  logsnr_sampling=logsnr_sampling, p_mean=p_mean, p_std=p_std)
  alpha, sigma = alpha_sigma(logsnr)
  x = x.astype(jnp.float32)
  eps = jax.random.normal(rng_eps, x.shape, jnp.float32)
  z = param.broadcast_to(alpha, x) * x + param.broadcast_to(sigma, x) * eps

  pred = denoise_fn(z, logsnr, cond).astype(jnp.float32)
  target = param.target_for(x, eps, alpha, sigma, prediction)
  mse = masked_mean(jnp.square(pred - target), frame_mask)  # [B]
  ratio = jnp.exp(log_weight(logsnr, weighting, min_snr_gamma)
                  - log_weight(logsnr, _OWN_WEIGHTING[prediction]))
  loss = ratio * mse

  x_hat, _ = param.to_x_eps(pred, z, alpha, sigma, prediction)
  x_mse = masked_mean(jnp.square(x_hat - x), frame_mask)
  return loss, {"logsnr": logsnr, "mse": mse, "x_mse": x_mse}
