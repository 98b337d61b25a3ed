"""A video diffusion transformer on space-time patches (DiT, Peebles & Xie 2023; Latte, Ma et al. 2024).

The video is cut into p_t x p x p tubelets, each embedded by one linear map into a token of width D
(a grid [B, T/p_t, H/p, W/p, D]). Every block conditions on the noise-level/class embedding with
adaLN-Zero (a shift, scale and gate per sub-layer, regressed from the embedding by a zero-initialised
Dense, so every block starts as the identity) and runs either spatial attention within each frame
then temporal attention at each patch position (factorised, Latte) or one joint space-time attention
(full), then an MLP. Positions are 3D rotary on queries and keys or learned axial tables. A final
adaLN and a zero-initialised linear map unpatchify the tokens to [B, T, H, W, out]: the initial
network outputs zero. Inputs are handled exactly as in the U-Net (vdm_jax/model/inputs.py): frame
conditioning on channels, and image frames whose temporal mixing is masked (joint image-video
training), which needs temporal_patch_size = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vdm_jax.model.attention import dot_product_attention, rotary, temporal_attention_mask
from vdm_jax.model.config import ModelConfig
from vdm_jax.model.inputs import Embedding, assemble_inputs, check_inputs, input_channels
from vdm_jax.model.layers import Dense, call_block, make_param
from vdm_jax.parallel.logical import constrain

TOKEN_AXES = ("batch", "time", "height", "width", "channels")  # the token grid [B, Nt, Nh, Nw, D]
MLP_AXES = ("batch", "time", "height", "width", "act_mlp")
QKV_AXES = ("batch", "length", None, "act_heads", None)


def patchify(x: jax.Array, pt: int, p: int) -> jax.Array:
  """[B, T, H, W, C] -> [B, T/pt, H/p, W/p, pt*p*p*C] (tubelets, features ordered (pt, p, p, C))."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // pt, pt, h // p, p, w // p, p, c)
  x = jnp.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))
  return x.reshape(b, t // pt, h // p, w // p, pt * p * p * c)


def unpatchify(x: jax.Array, pt: int, p: int) -> jax.Array:
  """The inverse of `patchify`: [B, Nt, Nh, Nw, pt*p*p*C] -> [B, Nt*pt, Nh*p, Nw*p, C]."""
  b, nt, nh, nw, f = x.shape
  c = f // (pt * p * p)
  x = x.reshape(b, nt, nh, nw, pt, p, p, c)
  x = jnp.transpose(x, (0, 1, 4, 2, 5, 3, 6, 7))
  return x.reshape(b, nt * pt, nh * p, nw * p, c)


def layer_norm(x: jax.Array, epsilon: float = 1e-6) -> jax.Array:
  """LayerNorm over the last axis without scale or bias (adaLN supplies them); float32 out."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + epsilon)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x [B, ..., D] * (1 + scale) + shift, with shift and scale [B, D] (adaLN, DiT eq. in section 3.2)."""
  expand = (slice(None),) + (None,) * (x.ndim - 2)
  return x * (1 + scale[expand]) + shift[expand]


def rope_3d(x: jax.Array, grid: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
  """3D rotary positions of x [N, L, heads, d]: the head dimension split into (t, h, w) parts.

  Each spatial axis gets 2 * (d // 6) features and time the rest (all even for even d), each
  rotated by `rotary` at that axis' positions grid[i] [L]. Relative in each axis: q.k depends only
  on the differences of the token positions.
  """
  d = x.shape[-1]
  ds = 2 * (d // 6)
  parts = jnp.split(x, [d - 2 * ds, d - ds], axis=-1)
  return jnp.concatenate([rotary(part, pos) for part, pos in zip(parts, grid)], axis=-1)


def token_grid(nt: int, nh: int, nw: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(t, h, w) positions [L] of the L = nt*nh*nw tokens in row-major (t, h, w) order."""
  t, h, w = jnp.meshgrid(jnp.arange(nt), jnp.arange(nh), jnp.arange(nw), indexing="ij")
  return t.reshape(-1), h.reshape(-1), w.reshape(-1)


class Attention(nnx.Module):
  """Multi-head self-attention over the token grid: within each frame ("space"), across frames at
  each patch position ("time"), or over all tokens ("full"). No residual: the block gates it."""

  def __init__(self, config: ModelConfig, mode: str, *, rngs: nnx.Rngs):
    d = config.hidden_size
    kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
    self.mode, self.heads = mode, config.heads_for(d)
    self.rope = config.position == "rope"
    self.chunk_size = config.attention_chunk_size
    self.attention_impl = config.attention_impl
    self.qkv = Dense(d, 3 * d, rngs=rngs, axes=("embed", "heads"), **kw)
    self.out = Dense(d, d, rngs=rngs, axes=("heads", "embed"), **kw)

  def __call__(self, x: jax.Array, frame_mask: jax.Array | None) -> jax.Array:
    """x [B, Nt, Nh, Nw, D]; frame_mask bool [B, Nt, Nt] (True = may attend) or None."""
    b, nt, nh, nw, d = x.shape
    qkv = self.qkv(x).reshape(b, nt * nh * nw, 3, self.heads, d // self.heads)
    qkv = constrain(qkv, QKV_AXES)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, L, heads, d/heads]
    if self.rope:
      grid = token_grid(nt, nh, nw)
      q, k = rope_3d(q, grid), rope_3d(k, grid)
    q, k, v = (self._group(a, nt, nh * nw) for a in (q, k, v))
    o = dot_product_attention(q, k, v, mask=self._mask(frame_mask, nh * nw),
                              chunk_size=self.chunk_size, impl=self.attention_impl)
    return self.out(self._ungroup(o, b, nt, nh, nw))

  def _group(self, a: jax.Array, nt: int, s: int) -> jax.Array:
    """[B, L, heads, e] -> [N, length, heads, e]: the sequences this mode attends over."""
    b, _, heads, e = a.shape
    if self.mode == "space":
      return a.reshape(b * nt, s, heads, e)  # [B*Nt, Nh*Nw, ...]
    if self.mode == "time":
      a = jnp.transpose(a.reshape(b, nt, s, heads, e), (0, 2, 1, 3, 4))
      return a.reshape(b * s, nt, heads, e)  # [B*Nh*Nw, Nt, ...]
    return a  # full: [B, Nt*Nh*Nw, ...]

  def _ungroup(self, o: jax.Array, b: int, nt: int, nh: int, nw: int) -> jax.Array:
    """The inverse of `_group`, heads merged: -> [B, Nt, Nh, Nw, D]."""
    d = o.shape[-2] * o.shape[-1]
    if self.mode == "time":
      o = jnp.transpose(o.reshape(b, nh * nw, nt, d), (0, 2, 1, 3))
    return o.reshape(b, nt, nh, nw, d)

  def _mask(self, frame_mask: jax.Array | None, s: int) -> jax.Array | None:
    """The frame mask for this mode's sequences (None: no image frames, or spatial attention)."""
    if frame_mask is None or self.mode == "space":
      return None
    b, nt, _ = frame_mask.shape
    if self.mode == "time":  # [B*S, 1, Nt, Nt]
      return jnp.broadcast_to(frame_mask[:, None], (b, s, nt, nt)).reshape(b * s, 1, nt, nt)
    frame = jnp.arange(nt * s) // s  # frame of each token
    return frame_mask[:, frame][:, :, frame][:, None]  # [B, 1, L, L]


class MLP(nnx.Module):
  """Dense -> GELU -> dropout -> Dense over the token width."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
    d, f = config.hidden_size, config.mlp_dim
    self.fc1 = Dense(d, f, rngs=rngs, axes=("embed", "mlp"), **kw)
    self.fc2 = Dense(f, d, rngs=rngs, axes=("mlp", "embed"), **kw)
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    h = constrain(jax.nn.gelu(self.fc1(x), approximate=True), MLP_AXES)
    return self.fc2(self.dropout(h, deterministic=deterministic))


class DiTBlock(nnx.Module):
  """adaLN-Zero block: per sub-layer (attention(s), then the MLP) x += gate * f(modulate(LN(x)))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
    modes = ("space", "time") if config.dit_attention == "factorised" else ("full",)
    self.attention = nnx.List([Attention(config, mode, rngs=rngs) for mode in modes])
    self.mlp = MLP(config, rngs=rngs)
    self.num_mods = 3 * (len(modes) + 1)  # shift, scale, gate per sub-layer
    self.ada = Dense(config.embedding_dim, self.num_mods * config.hidden_size, rngs=rngs,
                     zero_init=True, **kw)
    self.dtype = jnp.dtype(config.dtype)

  def __call__(self, x: jax.Array, emb: jax.Array, frame_mask: jax.Array | None,
               deterministic: bool = True) -> jax.Array:
    """x [B, Nt, Nh, Nw, D] float32 (the residual stream), emb [B, E] -> the same shape."""
    mods = jnp.split(self.ada(jax.nn.silu(emb)).astype(jnp.float32), self.num_mods, axis=-1)
    expand = (slice(None), None, None, None)
    for i, attention in enumerate(self.attention):
      shift, scale, gate = mods[3 * i:3 * i + 3]
      h = modulate(layer_norm(x), shift, scale).astype(self.dtype)
      x = constrain(x + gate[expand] * attention(h, frame_mask), TOKEN_AXES)
    shift, scale, gate = mods[-3:]
    h = self.mlp(modulate(layer_norm(x), shift, scale).astype(self.dtype), deterministic)
    return constrain(x + gate[expand] * h, TOKEN_AXES)


class DiT(nnx.Module):
  """The video DiT; returns the v (or eps / x) prediction [B, T, H, W, out] float32."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg = config
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    d, pt, p = cfg.hidden_size, cfg.temporal_patch_size, cfg.patch_size
    self.embed = Embedding(cfg, d, rngs=rngs)
    self.patch_embed = Dense(pt * p * p * input_channels(cfg), d, rngs=rngs, axes=("patch", "embed"),
                             **kw)
    if cfg.position == "learned":
      init, pdt = jax.nn.initializers.normal(0.02), kw["param_dtype"]
      self.pos_time = make_param(rngs, init, (cfg.max_frames // pt, d), ("position", "embed"), pdt)
      self.pos_rows = make_param(rngs, init, (cfg.image_size // p, d), ("position", "embed"), pdt)
      self.pos_cols = make_param(rngs, init, (cfg.image_size // p, d), ("position", "embed"), pdt)
    self.blocks = nnx.List([DiTBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.final_ada = Dense(cfg.embedding_dim, 2 * d, rngs=rngs, zero_init=True, **kw)
    self.final = Dense(d, pt * p * p * cfg.out_channels, rngs=rngs, axes=("embed", "patch"),
                       zero_init=True, **kw)

  def __call__(self, z: jax.Array, noise_level: jax.Array, *, labels: jax.Array | None = None,
               cond_frames: jax.Array | None = None, cond_mask: jax.Array | None = None,
               image_mask: jax.Array | None = None, lowres: jax.Array | None = None,
               aug_level: jax.Array | None = None, micro: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Predicts v (or eps / x, see config.prediction) for a noisy video; arguments as `UNet`'s.

    Args:
      z: [B, T, H, W, in_channels] noisy video (T, H, W divisible by the tubelet).
      noise_level: [B] float, the normalised angle phi / (pi/2) in [0, 1].
      labels: int32 [B] in [0, num_classes]; num_classes = the null class. Required iff
        num_classes > 0.
      cond_frames: [B, T, H, W, cond_channels]; cond_mask: [B, T] float (1 = frame given).
        Required iff cond_channels > 0.
      image_mask: bool [B, T]; True = independent image frame (no temporal mixing). With
        temporal_patch_size > 1 it must be all False (a concrete mask with an image frame raises;
        a traced one is ignored, and the config check refuses data.image_frames > 0).
      lowres: [B, T, H, W, lowres_channels], aug_level: [B]: a cascade stage's upsampled, noised
        conditioning video and its augmentation level. Required iff lowres_channels > 0.
      micro: [B, len(micro_conditioning)] float, the clip's micro-conditioning values (fps,
        motion) in the config's order. Required iff micro_conditioning.
      deterministic: False enables dropout (draws from the 'default' rng stream).
    Returns:
      [B, T, H, W, out_channels] float32.
    """
    cfg = self.config
    check_inputs(cfg, z, noise_level, labels, cond_frames, cond_mask, image_mask, lowres, aug_level,
                 micro)
    frame_mask = self._frame_mask(image_mask)
    emb = self.embed(noise_level, labels, aug_level, micro)  # [B, E] float32
    x = assemble_inputs(cfg, z, cond_frames, cond_mask, lowres)
    pt, p = cfg.temporal_patch_size, cfg.patch_size
    h = self.patch_embed(patchify(x, pt, p)).astype(jnp.float32)  # [B, Nt, Nh, Nw, D]
    h = constrain(h + self._positions(*h.shape[1:4]), TOKEN_AXES)
    remat = cfg.remat == "block"
    for block in self.blocks:
      h = call_block(block, remat, h, emb, frame_mask, deterministic=deterministic)
    shift, scale = jnp.split(self.final_ada(jax.nn.silu(emb)).astype(jnp.float32), 2, axis=-1)
    out = self.final(modulate(layer_norm(h), shift, scale).astype(jnp.dtype(cfg.dtype)))
    return unpatchify(out, pt, p).astype(jnp.float32)

  def _frame_mask(self, image_mask: jax.Array | None) -> jax.Array | None:
    """[B, T, T] temporal attention mask of the image frames (None when there are none)."""
    if image_mask is None:
      return None
    if self.config.temporal_patch_size > 1:
      if not isinstance(image_mask, jax.core.Tracer) and bool(jnp.any(image_mask)):
        raise ValueError(f"image_mask marks image frames, which tubelets of temporal_patch_size="
                         f"{self.config.temporal_patch_size} would mix; use temporal_patch_size=1.")
      return None
    return temporal_attention_mask(image_mask)

  def _positions(self, nt: int, nh: int, nw: int) -> jax.Array | float:
    """Learned axial positions [Nt, Nh, Nw, D] float32 (0.0 with rotary positions)."""
    if self.config.position != "learned":
      return 0.0
    t, r, c = (a[...].astype(jnp.float32) for a in (self.pos_time, self.pos_rows, self.pos_cols))
    return t[:nt, None, None] + r[None, :nh, None] + c[None, None, :nw]
