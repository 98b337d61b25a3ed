"""Where the model and the diffusion core meet: a U-Net as a denoise_fn(z, logsnr, cond)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.diffusion import noise_level_from_logsnr

# cond: a dict with any of labels [B], cond_frames [B, T, H, W, C], cond_mask [B, T], image_mask [B, T].
COND_KEYS = ("labels", "cond_frames", "cond_mask", "image_mask")


def make_denoise_fn(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, *,
                    deterministic: bool = True,
                    dropout_rng: jax.Array | None = None) -> Callable[[jax.Array, jax.Array, Any], jax.Array]:
  """denoise_fn(z, logsnr [B], cond dict) -> the model's prediction, float32."""
  model = nnx.merge(graphdef, params, rest)
  if dropout_rng is not None and not deterministic:
    nnx.reseed(model, dropout=dropout_rng)

  def denoise_fn(z, logsnr, cond):
    cond = dict(cond or {})
    unknown = set(cond) - set(COND_KEYS)
    if unknown:
      raise ValueError(f"unknown conditioning keys {sorted(unknown)}; known: {COND_KEYS}")
    return model(z, noise_level_from_logsnr(logsnr), deterministic=deterministic, **cond)

  return denoise_fn


def null_cond(cond: dict, num_classes: int) -> dict:
  """The unconditional version of `cond` for classifier-free guidance: null class, no frames."""
  out = dict(cond)
  if "labels" in out:
    out["labels"] = jnp.full_like(out["labels"], num_classes)
  if "cond_mask" in out:
    out["cond_mask"] = jnp.zeros_like(out["cond_mask"])
    out["cond_frames"] = jnp.zeros_like(out["cond_frames"])
  return out


def frame_condition(video: jax.Array, known: jax.Array) -> dict:
  """cond_frames / cond_mask for known frames: video [B, T, H, W, C], known [B, T] in {0, 1}."""
  mask = known.astype(jnp.float32)
  return {"cond_frames": video * mask[:, :, None, None, None], "cond_mask": mask}
