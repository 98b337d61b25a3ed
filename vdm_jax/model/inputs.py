"""What every backbone does with its inputs before its own layers: one definition, shared.

The noise-level/class embedding, the input channels (the noisy video plus any conditioning
concatenated as channels) and the checks of the conditioning arguments against the model config.
A cascade super-resolution stage (lowres_channels > 0) also gets its conditioning video `lowres`
[B, T, H, W, lowres_channels] as channels and its augmentation level `aug_level` [B] embedded like
the noise level (sinusoidal features, own MLP, added to the embedding). So is each micro-conditioning
scalar (model.micro_conditioning: the clip's "fps", "motion"; `micro` [B, n] in that order), from
log1p(value) (MICRO_SCALE spreads it over the noise level's range of arguments).
A backbone (U-Net, DiT) calls these, so a new kind of conditioning is added here once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.model.layers import Dense, sinusoidal_embedding

MICRO_SCALE = 100.0  # sinusoidal scale of log1p(micro value): log1p in [0, ~7] -> arguments [0, ~700]


class Embedding(nnx.Module):
  """Noise level [B] (labels [B], aug_level [B]) -> [B, E]: sinusoidal features, MLP, + class
  embedding, + the same features and an MLP of its own of a cascade stage's augmentation level.

  Args:
    config: the model config (embedding_dim, emb_mlp_layers, num_classes, lowres_channels,
      param_dtype).
    sin_dim: width of the sinusoidal features of the noise level.
  """

  def __init__(self, config: Any, sin_dim: int, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.float32, param_dtype=jnp.dtype(config.param_dtype))
    e = config.embedding_dim
    self.sin_dim = sin_dim
    dims = [sin_dim] + [e] * config.emb_mlp_layers
    self.mlp = nnx.List([Dense(a, b, rngs=rngs, **kw) for a, b in zip(dims[:-1], dims[1:])])
    # Row num_classes is the learned null class (classifier-free guidance).
    self.label_emb = nnx.Param(
        jax.random.normal(rngs.params(), (config.num_classes + 1, e), kw["param_dtype"]),
        logical_axes=("vocab", "embed")) if config.num_classes else None
    self.aug_mlp = nnx.List([Dense(a, b, rngs=rngs, **kw) for a, b in zip(dims[:-1], dims[1:])]
                            ) if config.lowres_channels else None
    # Created last, and only when asked: a model without micro-conditioning keeps its parameters.
    micro = getattr(config, "micro_conditioning", ())
    self.micro_mlps = nnx.List([
        nnx.List([Dense(a, b, rngs=rngs, **kw) for a, b in zip(dims[:-1], dims[1:])])
        for _ in micro]) if micro else None

  def __call__(self, noise_level: jax.Array, labels: jax.Array | None,
               aug_level: jax.Array | None = None, micro: jax.Array | None = None) -> jax.Array:
    h = _mlp(self.mlp, sinusoidal_embedding(noise_level, self.sin_dim))
    if self.label_emb is not None:
      h = h + self.label_emb[...].astype(jnp.float32)[labels]
    if self.aug_mlp is not None:
      h = h + _mlp(self.aug_mlp, sinusoidal_embedding(aug_level, self.sin_dim))
    if self.micro_mlps is not None:
      u = jnp.log1p(jnp.maximum(micro.astype(jnp.float32), 0.0))  # [B, n]
      for i, layers in enumerate(self.micro_mlps):
        h = h + _mlp(layers, sinusoidal_embedding(u[:, i], self.sin_dim, MICRO_SCALE))
    return h  # [B, E] float32


def _mlp(layers: nnx.List, h: jax.Array) -> jax.Array:
  """Dense layers with SiLU between them (none after the last)."""
  for i, layer in enumerate(layers):
    h = layer(h)
    if i < len(layers) - 1:
      h = jax.nn.silu(h)
  return h


def input_channels(cfg: Any) -> int:
  """Channels of `assemble_inputs`' output: z, conditioning frames and their mask, lowres video."""
  return cfg.in_channels + (cfg.cond_channels + 1 if cfg.cond_channels else 0) + cfg.lowres_channels


def assemble_inputs(cfg: Any, z: jax.Array, cond_frames: jax.Array | None,
                    cond_mask: jax.Array | None, lowres: jax.Array | None = None) -> jax.Array:
  """[B, T, H, W, input_channels(cfg)] float32: z with the conditioning concatenated as channels."""
  x = z.astype(jnp.float32)
  if cfg.cond_channels:
    m = cond_mask.astype(jnp.float32)[:, :, None, None, None]  # [B, T, 1, 1, 1]
    mask_ch = jnp.broadcast_to(m, (*z.shape[:4], 1))
    x = jnp.concatenate([x, cond_frames.astype(jnp.float32) * m, mask_ch], axis=-1)
  if cfg.lowres_channels:
    x = jnp.concatenate([x, lowres.astype(jnp.float32)], axis=-1)
  return x


def check_inputs(cfg: Any, z, noise_level, labels, cond_frames, cond_mask, image_mask,
                 lowres=None, aug_level=None, micro=None) -> None:
  """ValueError saying what to pass when the arguments do not match the model config."""
  if z.ndim != 5 or z.shape[-1] != cfg.in_channels:
    raise ValueError(f"z must be [B, T, H, W, {cfg.in_channels}], got {z.shape}.")
  b, t, hh, ww, _ = z.shape
  cfg.validate(t, hh, ww)
  if noise_level.shape != (b,):
    raise ValueError(f"noise_level must be [B]=({b},), got {noise_level.shape}.")
  if cfg.num_classes and (labels is None or labels.shape != (b,)):
    raise ValueError(f"num_classes={cfg.num_classes}: pass labels [B]=({b},) "
                     f"(use {cfg.num_classes} for the null class).")
  if not cfg.num_classes and labels is not None:
    raise ValueError("labels given but num_classes=0; set num_classes in the config.")
  if cfg.cond_channels:
    if cond_frames is None or cond_mask is None:
      raise ValueError(f"cond_channels={cfg.cond_channels}: pass cond_frames and cond_mask.")
    if cond_frames.shape != (b, t, hh, ww, cfg.cond_channels) or cond_mask.shape != (b, t):
      raise ValueError(f"cond_frames must be {(b, t, hh, ww, cfg.cond_channels)} and cond_mask "
                       f"{(b, t)}; got {cond_frames.shape} and {cond_mask.shape}.")
  elif cond_frames is not None or cond_mask is not None:
    raise ValueError("cond_frames given but cond_channels=0; set cond_channels in the config.")
  _check_lowres(cfg, z.shape, lowres, aug_level)
  _check_micro(cfg, b, micro)
  if image_mask is not None:
    if image_mask.shape != (b, t):
      raise ValueError(f"image_mask must be [B, T]={(b, t)}, got {image_mask.shape}.")
    if getattr(cfg, "temporal_downsample", ()):
      raise ValueError("image_mask cannot be combined with temporal_downsample (pooling frames "
                       "would mix images); set temporal_downsample=().")


def _check_lowres(cfg: Any, z_shape: tuple[int, ...], lowres, aug_level) -> None:
  """A super-resolution stage's conditioning video and augmentation level, and only for one."""
  if not cfg.lowres_channels:
    if lowres is not None or aug_level is not None:
      raise ValueError("lowres / aug_level given but lowres_channels=0; set model.lowres_channels "
                       "(a cascade super-resolution stage).")
    return
  want = (*z_shape[:4], cfg.lowres_channels)
  if lowres is None or aug_level is None:
    raise ValueError(f"lowres_channels={cfg.lowres_channels}: pass lowres {want} (the previous "
                     "stage's video at this shape) and aug_level [B].")
  if lowres.shape != want or aug_level.shape != z_shape[:1]:
    raise ValueError(f"lowres must be {want} and aug_level {z_shape[:1]}; got {lowres.shape} and "
                     f"{aug_level.shape}.")


def _check_micro(cfg: Any, b: int, micro) -> None:
  """The micro-conditioning scalars [B, len(micro_conditioning)], and only for a model that has them."""
  names = getattr(cfg, "micro_conditioning", ())
  if not names:
    if micro is not None:
      raise ValueError("micro given but model.micro_conditioning=(); set it (e.g. ('motion',)).")
    return
  if micro is None or micro.shape != (b, len(names)):
    got = None if micro is None else micro.shape
    raise ValueError(f"model.micro_conditioning={names}: pass micro [B, {len(names)}]=({b}, "
                     f"{len(names)}) (the values in that order), got {got}.")
