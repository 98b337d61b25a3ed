"""Spatial and temporal self-attention of the factorised U-Net (VDM section 3).

Spatial attention runs over the H*W positions of each frame (frames folded into the batch);
temporal attention runs over the T frames at each spatial position, with relative position
information (T5 bucketed bias per head, or rotary) and an optional image mask that makes a frame
attend only to itself (joint image-video training, VDM section 3.1 / 4.3).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.model.layers import Dense, GroupNorm, make_param
from vdm_jax.parallel.logical import constrain


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None,
                          mask: jax.Array | None = None, chunk_size: int = 0,
                          impl: str = "reference") -> jax.Array:
  """softmax(q k^T / sqrt(d) + bias) v, softmax in float32.

  Args:
    q, k, v: [N, L, heads, d] in the compute dtype.
    bias: broadcastable to [N, heads, L, L] (float32), 4-D, or None.
    mask: bool broadcastable to [N, heads, L, L], 4-D, True = may attend, or None.
    chunk_size: if > 0 and L > chunk_size (and no bias/mask), process queries in chunks to bound
      the [N, heads, L, L] temporary.
    impl: "reference" (the einsums below), "xla" or "cudnn" (jax.nn.dot_product_attention's
      implementations; cudnn is GPU-only, 16-bit) or "auto" (`resolve_attention_impl`).
  Returns:
    [N, L, heads, d] in q's dtype.
  """
  impl = resolve_attention_impl(impl, q.dtype)
  length = q.shape[1]
  if chunk_size and length > chunk_size and length % chunk_size == 0 and bias is None and mask is None:
    qc = q.reshape(q.shape[0], length // chunk_size, chunk_size, *q.shape[2:])
    qc = jnp.moveaxis(qc, 1, 0)  # [chunks, N, chunk, heads, d]
    out = jax.lax.map(lambda qi: dot_product_attention(qi, k, v, impl=impl), qc)
    return jnp.moveaxis(out, 0, 1).reshape(q.shape)
  if impl != "reference":
    if impl == "cudnn" and bias is not None:
      bias = bias.astype(q.dtype)  # cuDNN takes the bias in the inputs' dtype
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("nqhd,nkhd->nhqk", q * jnp.asarray(scale, q.dtype), k,
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("nhqk,nkhd->nqhd", weights, v)


def resolve_attention_impl(impl: str, dtype: jnp.dtype) -> str:
  """"auto" -> "cudnn" on a GPU backend with a 16-bit dtype (what cuDNN flash attention takes),
  else "xla"; any other name is returned as it is."""
  if impl != "auto":
    return impl
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if half and jax.default_backend() == "gpu" else "xla"


def t5_relative_buckets(relative_position: jax.Array, num_buckets: int, max_distance: int) -> jax.Array:
  """Bidirectional T5 buckets (Raffel et al. 2020): exact for small |d|, log-spaced up to max_distance."""
  half = num_buckets // 2
  ret = (relative_position > 0).astype(jnp.int32) * half
  n = jnp.abs(relative_position)
  max_exact = max(half // 2, 1)
  is_small = n < max_exact
  log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
      max(max_distance / max_exact, 1.0 + 1e-6))
  large = max_exact + (log_ratio * (half - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, half - 1)
  return ret + jnp.where(is_small, n, large)


def rotary(x: jax.Array, positions: jax.Array) -> jax.Array:
  """Rotary position embedding (Su et al. 2021) of x [N, L, heads, d] at positions [L]."""
  d = x.shape[-1]
  freqs = 1.0 / (10000.0 ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))  # [d/2]
  angles = positions.astype(jnp.float32)[:, None] * freqs[None]  # [L, d/2]
  cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.astype(x.dtype)


class _SelfAttention(nnx.Module):
  """GroupNorm -> qkv -> attention -> zero-initialised output projection; residual."""

  def __init__(self, channels: int, heads: int, groups: int, *, rngs: nnx.Rngs,
               dtype: jnp.dtype, param_dtype: jnp.dtype, attention_impl: str = "reference"):
    self.heads, self.attention_impl = heads, attention_impl
    self.norm = GroupNorm(channels, groups, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.qkv = Dense(channels, 3 * channels, rngs=rngs, axes=("embed", "heads"),
                     dtype=dtype, param_dtype=param_dtype)
    self.out = Dense(channels, channels, rngs=rngs, axes=("heads", "embed"), zero_init=True,
                     dtype=dtype, param_dtype=param_dtype)

  def _qkv(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    n, length, c = h.shape
    qkv = self.qkv(h).reshape(n, length, 3, self.heads, c // self.heads)
    qkv = constrain(qkv, ("batch", "length", None, "act_heads", None))
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [N, L, heads, d]


class SpatialAttention(_SelfAttention):
  """Self-attention over the H*W positions of each frame."""

  def __init__(self, channels: int, heads: int, groups: int, *, rngs: nnx.Rngs,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               chunk_size: int = 0, attention_impl: str = "reference"):
    super().__init__(channels, heads, groups, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                     attention_impl=attention_impl)
    self.chunk_size = chunk_size

  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C]
    b, t, hh, ww, c = x.shape
    h = self.norm(x, reduce_axes=(2, 3)).reshape(b * t, hh * ww, c)  # [B*T, HW, C]
    q, k, v = self._qkv(h)
    o = dot_product_attention(q, k, v, chunk_size=self.chunk_size, impl=self.attention_impl)
    o = o.reshape(b * t, hh * ww, c)
    return x + self.out(o).reshape(x.shape).astype(x.dtype)


class TemporalAttention(_SelfAttention):
  """Self-attention over the T frames at each spatial position, with relative positions."""

  def __init__(self, channels: int, heads: int, groups: int, *, rngs: nnx.Rngs,
               relative_position: str = "t5", num_buckets: int = 32, max_distance: int = 32,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               attention_impl: str = "reference"):
    super().__init__(channels, heads, groups, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                     attention_impl=attention_impl)
    self.relative_position, self.num_buckets, self.max_distance = (
        relative_position, num_buckets, max_distance)
    if relative_position == "t5":
      self.rel_bias = make_param(rngs, zeros_init_small, (num_buckets, heads),
                                 ("buckets", "heads"), param_dtype)

  def _bias(self, t: int) -> jax.Array | None:
    if self.relative_position != "t5":
      return None
    pos = jnp.arange(t)
    buckets = t5_relative_buckets(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
    bias = self.rel_bias[...].astype(jnp.float32)[buckets]  # [T, T, heads]
    return jnp.transpose(bias, (2, 0, 1))[None]  # [1, heads, T, T]

  def __call__(self, x: jax.Array, image_mask: jax.Array | None = None) -> jax.Array:
    """x [B, T, H, W, C]; image_mask bool [B, T] (True = frame attends only to itself)."""
    b, t, hh, ww, c = x.shape
    h = self.norm(x, reduce_axes=(2, 3))
    h = jnp.transpose(h, (0, 2, 3, 1, 4)).reshape(b * hh * ww, t, c)  # [B*H*W, T, C]
    q, k, v = self._qkv(h)
    if self.relative_position == "rotary":
      pos = jnp.arange(t)
      q, k = rotary(q, pos), rotary(k, pos)
    mask = None
    if image_mask is not None:
      mask = temporal_attention_mask(image_mask)  # [B, T, T]
      mask = jnp.broadcast_to(mask[:, None, None], (b, hh, ww, t, t)).reshape(b * hh * ww, 1, t, t)
    o = dot_product_attention(q, k, v, bias=self._bias(t), mask=mask, impl=self.attention_impl)
    o = o.reshape(b, hh, ww, t, c)
    o = jnp.transpose(o, (0, 3, 1, 2, 4))  # [B, T, H, W, C]
    return x + self.out(o).astype(x.dtype)


def temporal_attention_mask(image_mask: jax.Array) -> jax.Array:
  """[B, T] bool (True = independent image) -> [B, T, T] bool attention mask.

  Video frames attend to all video frames; an image frame attends only to itself and no video
  frame attends to it: blockdiag(ones, eye) after sorting (VDM section 3.1).
  """
  is_img = image_mask.astype(bool)
  t = is_img.shape[-1]
  eye = jnp.eye(t, dtype=bool)[None]
  video_pair = (~is_img)[:, :, None] & (~is_img)[:, None, :]
  return video_pair | eye


def zeros_init_small(key, shape, dtype=jnp.float32):
  """T5 bias init: zeros (the model starts with no positional preference)."""
  del key
  return jnp.zeros(shape, dtype)
