"""The space-time factorised U-Net of Video Diffusion Models (Ho, Salimans et al. 2022, section 3).

Convolutions are (1, 3, 3): frames are folded into the batch and never mix in a conv. Each
attention level has spatial attention over H*W followed by temporal attention over T with relative
positions. Noise level and class enter through an embedding that drives FiLM scale/shift in every
residual block. Optional: conditioning frames on channels, image frames with identity temporal
attention (joint image-video training), Lumiere-style temporal down/up-sampling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.model.attention import SpatialAttention, TemporalAttention
from vdm_jax.model.config import ModelConfig
from vdm_jax.model.inputs import Embedding, assemble_inputs, check_inputs, input_channels
from vdm_jax.model.layers import Conv2D, Dense, GroupNorm, call_block
from vdm_jax.parallel.logical import constrain

ACT_AXES = ("batch", "time", "height", "width", "channels")


def _frames(fn, x: jax.Array) -> jax.Array:
  """Applies a per-frame fn on [B*T, H, W, C] to x [B, T, H, W, C]."""
  b, t = x.shape[:2]
  y = fn(x.reshape(b * t, *x.shape[2:]))
  return y.reshape(b, t, *y.shape[1:])


class ResBlock(nnx.Module):
  """GroupNorm, SiLU, (1,3,3) conv, FiLM from the embedding, GroupNorm, SiLU, dropout, zero conv."""

  def __init__(self, cin: int, cout: int, config: ModelConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
    ckw = dict(kw, conv_impl=config.conv_impl)
    self.norm1 = GroupNorm(cin, config.norm_groups_for(cin), rngs=rngs, **kw)
    self.conv1 = Conv2D(cin, cout, rngs=rngs, **ckw)
    self.film = Dense(config.embedding_dim, 2 * cout, rngs=rngs, **kw)
    self.norm2 = GroupNorm(cout, config.norm_groups_for(cout), rngs=rngs, **kw)
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
    self.conv2 = Conv2D(cout, cout, rngs=rngs, zero_init=True, **ckw)
    self.skip = Conv2D(cin, cout, rngs=rngs, kernel_size=1, **ckw) if cin != cout else None

  def __call__(self, x: jax.Array, emb: jax.Array, deterministic: bool = True) -> jax.Array:
    """x [B, T, H, W, Cin], emb [B, E] -> [B, T, H, W, Cout]."""
    h = jax.nn.silu(self.norm1(x, reduce_axes=(2, 3)))
    h = _frames(self.conv1, h)
    scale, shift = jnp.split(self.film(jax.nn.silu(emb))[:, None, None, None], 2, axis=-1)
    h = self.norm2(h, reduce_axes=(2, 3)) * (1 + scale) + shift
    h = self.dropout(jax.nn.silu(h), deterministic=deterministic)
    h = _frames(self.conv2, h)
    skip = x if self.skip is None else _frames(self.skip, x)
    return constrain(skip + h, ACT_AXES)


class Downsample(nnx.Module):
  """Stride-2 (1,3,3) conv in space; optionally averages frame pairs (halves T, Lumiere-style)."""

  def __init__(self, channels: int, config: ModelConfig, temporal: bool, *, rngs: nnx.Rngs):
    self.conv = Conv2D(channels, channels, rngs=rngs, stride=2, conv_impl=config.conv_impl,
                       dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
    self.temporal = temporal

  def __call__(self, x: jax.Array) -> jax.Array:
    x = _frames(self.conv, x)
    if self.temporal:
      b, t = x.shape[:2]
      x = x.reshape(b, t // 2, 2, *x.shape[2:]).mean(axis=2)
    return x


class Upsample(nnx.Module):
  """Nearest x2 in space (and optionally time), then a (1,3,3) conv."""

  def __init__(self, channels: int, config: ModelConfig, temporal: bool, *, rngs: nnx.Rngs):
    self.conv = Conv2D(channels, channels, rngs=rngs, conv_impl=config.conv_impl,
                       dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
    self.temporal = temporal

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.temporal:
      x = jnp.repeat(x, 2, axis=1)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    return _frames(self.conv, x)


class UNet(nnx.Module):
  """The VDM space-time U-Net; returns the v (or eps / x) prediction [B, T, H, W, out] float32."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    cfg = config
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    self.embed = Embedding(cfg, cfg.base_channels, rngs=rngs)
    cin = input_channels(cfg)
    ch = cfg.level_channels(0)
    self.conv_in = Conv2D(cin, ch, rngs=rngs, conv_impl=cfg.conv_impl, **kw)
    skips, res = [ch], None
    down = []
    for level in range(cfg.num_levels):
      res = level  # resolution index; the spatial size is H / 2**level
      out = cfg.level_channels(level)
      for _ in range(cfg.num_res_blocks):
        down.append(self._stage(ch, out, level, rngs))
        ch = out
        skips.append(ch)
      if level < cfg.num_levels - 1:
        down.append(Downsample(ch, cfg, level in cfg.temporal_downsample, rngs=rngs))
        skips.append(ch)
    self.down = nnx.List(down)
    self.mid = nnx.List([self._stage(ch, ch, res, rngs, force_attention=True),
                         self._stage(ch, ch, res, rngs, attention=False)])
    up = []
    for level in reversed(range(cfg.num_levels)):
      out = cfg.level_channels(level)
      for _ in range(cfg.num_res_blocks + 1):
        up.append(self._stage(ch + skips.pop(), out, level, rngs))
        ch = out
      if level > 0:
        up.append(Upsample(ch, cfg, (level - 1) in cfg.temporal_downsample, rngs=rngs))
    self.up = nnx.List(up)
    self.norm_out = GroupNorm(ch, cfg.norm_groups_for(ch), rngs=rngs, **kw)
    self.conv_out = Conv2D(ch, cfg.out_channels, rngs=rngs, zero_init=True,
                           conv_impl=cfg.conv_impl, **kw)

  def _stage(self, cin: int, cout: int, level: int, rngs: nnx.Rngs, *,
             force_attention: bool = False, attention: bool = True) -> Stage:
    return Stage(cin, cout, level, self.config, rngs=rngs, force_attention=force_attention,
                 attention=attention)

  def __call__(self, z: jax.Array, noise_level: jax.Array, *, labels: jax.Array | None = None,
               cond_frames: jax.Array | None = None, cond_mask: jax.Array | None = None,
               image_mask: jax.Array | None = None, lowres: jax.Array | None = None,
               aug_level: jax.Array | None = None, micro: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Predicts v (or eps / x, see config.prediction) for a noisy video.

    Args:
      z: [B, T, H, W, in_channels] noisy video.
      noise_level: [B] float, the normalised angle phi / (pi/2) in [0, 1].
      labels: int32 [B] in [0, num_classes]; num_classes = the null class. Required iff
        num_classes > 0.
      cond_frames: [B, T, H, W, cond_channels]; cond_mask: [B, T] float (1 = frame given).
        Required iff cond_channels > 0.
      image_mask: bool [B, T]; True = independent image frame (identity temporal attention).
      lowres: [B, T, H, W, lowres_channels], a cascade stage's (noised) conditioning video;
        aug_level: [B] float, its augmentation noise level. Required iff lowres_channels > 0.
      micro: [B, len(micro_conditioning)] float, the clip's micro-conditioning values (fps,
        motion) in the config's order. Required iff micro_conditioning.
      deterministic: False enables dropout (draws from the 'default' rng stream).
    Returns:
      [B, T, H, W, out_channels] float32.
    """
    cfg = self.config
    check_inputs(cfg, z, noise_level, labels, cond_frames, cond_mask, image_mask, lowres, aug_level,
                 micro)
    emb = self.embed(noise_level, labels, aug_level, micro)
    x = assemble_inputs(cfg, z, cond_frames, cond_mask, lowres)
    h = constrain(_frames(self.conv_in, x.astype(jnp.dtype(cfg.dtype))), ACT_AXES)
    hs = [h]
    for block in self.down:
      h = self._run(block, h, emb, image_mask, deterministic)
      hs.append(h)
    for block in self.mid:
      h = self._run(block, h, emb, image_mask, deterministic)
    for block in self.up:
      if isinstance(block, Stage):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
      h = self._run(block, h, emb, image_mask, deterministic)
    h = jax.nn.silu(self.norm_out(h, reduce_axes=(2, 3)))
    return _frames(self.conv_out, h).astype(jnp.float32)

  def _run(self, block, h, emb, image_mask, deterministic):
    if isinstance(block, Stage):
      return block(h, emb, image_mask, deterministic)
    return block(h)

class Stage(nnx.Module):
  """One residual block, then (at attention levels) spatial and temporal attention."""

  def __init__(self, cin: int, cout: int, level: int, config: ModelConfig, *, rngs: nnx.Rngs,
               force_attention: bool = False, attention: bool = True):
    cfg = config
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
              attention_impl=cfg.attention_impl)
    self.remat = cfg.remat == "block"
    self.res = ResBlock(cin, cout, cfg, rngs=rngs)
    at_level = force_attention or (attention and _is_attention_level(cfg, level))
    heads, groups = cfg.heads_for(cout), cfg.norm_groups_for(cout)
    self.spatial = (SpatialAttention(cout, heads, groups, rngs=rngs,
                                     chunk_size=cfg.attention_chunk_size, **kw)
                    if at_level else None)
    temporal = (cfg.temporal_attention == "all_levels" and attention) or (
        cfg.temporal_attention == "attention_levels" and at_level)
    self.temporal = (TemporalAttention(
        cout, heads, groups, rngs=rngs, relative_position=cfg.relative_position,
        num_buckets=cfg.relative_buckets, max_distance=cfg.max_relative_distance, **kw)
                     if temporal else None)

  def __call__(self, x, emb, image_mask=None, deterministic: bool = True):
    x = call_block(self.res, self.remat, x, emb, deterministic=deterministic)
    if self.spatial is not None:
      x = constrain(call_block(self.spatial, self.remat, x), ACT_AXES)
    if self.temporal is not None:
      x = constrain(call_block(self.temporal, self.remat, x, image_mask), ACT_AXES)
    return x


def _is_attention_level(cfg: ModelConfig, level: int) -> bool:
  """Level `level` runs at spatial size image_size / 2**level; attention where that size is listed."""
  return cfg.image_size // 2 ** level in cfg.attention_resolutions
