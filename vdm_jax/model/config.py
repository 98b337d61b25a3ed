"""Configuration of the space-time factorised U-Net (VDM, Ho et al. 2022, section 3).

One frozen dataclass; every field has a default that gives a small CPU model. Built from an
ml_collections ConfigDict as `UNetConfig(**dict(config.model))` (lists become tuples).
"""

from __future__ import annotations

import dataclasses
import math

TEMPORAL_ATTENTION = ("attention_levels", "all_levels", "none")
RELATIVE_POSITION = ("t5", "rotary", "none")
DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "block")
CONV_IMPL = ("lax", "im2col")
PREDICTION = ("v", "eps", "x")
# Attention kernels: the project's einsum reference, jax.nn.dot_product_attention's XLA or cuDNN flash
# implementation, or "auto" (cuDNN on GPU with a 16-bit dtype, XLA elsewhere).
ATTENTION_IMPL = ("reference", "xla", "cudnn", "auto")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Hyper-parameters of `vdm_jax.model.UNet`.

  Attributes:
    in_channels: channels of the noisy input z.
    out_channels: channels of the prediction.
    base_channels: channels at the first level.
    channel_mult: per-level multiplier of base_channels; len = number of levels.
    num_res_blocks: residual blocks per level (down path; the up path has one more).
    attention_resolutions: spatial sizes (H at that level) that get spatial attention.
    image_size: input frame height H; with attention_resolutions it fixes the attention levels.
    head_dim: channels per attention head (used when num_heads == 0).
    num_heads: fixed number of heads (0 = channels // head_dim).
    emb_dim: width of the noise/class embedding (0 = 4 * base_channels).
    emb_mlp_layers: Dense layers of the embedding MLP.
    dropout: dropout rate inside residual blocks.
    num_classes: number of classes (0 = unconditional); index num_classes is the null class.
    cond_channels: channels of conditioning frames (0 = none); a mask channel is added.
    temporal_attention: "attention_levels" (after each spatial attention), "all_levels"
      (after every residual block) or "none" (an image model).
    relative_position: "t5" (bucketed bias per head), "rotary" or "none".
    max_relative_distance: distance beyond which T5 buckets saturate.
    relative_buckets: number of T5 buckets.
    param_dtype: storage dtype of parameters.
    dtype: compute dtype ("bfloat16" for mixed precision; norms and softmax stay float32).
    remat: "none" or "block" (rematerialise every residual/attention block).
    temporal_downsample: levels whose downsample also halves T (Lumiere-style).
    norm_groups: GroupNorm groups (gcd with the channel count is used).
    conv_impl: "lax" (lax.conv) or "im2col" (one matmul of gathered windows). On XLA CPU lax is as
      fast on one device and 1.5x faster with one device per core (benchmarks/RESULTS.md).
    attention_chunk_size: query chunk of spatial attention (0 = no chunking).
    prediction: what the output is ("v", "eps" or "x"); informational for callers.
    attention_impl: "reference" (einsum, softmax in float32), "xla" or "cudnn"
      (jax.nn.dot_product_attention's implementations) or "auto" (cudnn on GPU with a 16-bit dtype,
      else xla). The parameters are the same under every choice.
  """

  in_channels: int = 3
  out_channels: int = 3
  base_channels: int = 32
  channel_mult: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 1
  attention_resolutions: tuple[int, ...] = (8,)
  image_size: int = 32
  head_dim: int = 32
  num_heads: int = 0
  emb_dim: int = 0
  emb_mlp_layers: int = 2
  dropout: float = 0.0
  num_classes: int = 0
  cond_channels: int = 0
  temporal_attention: str = "attention_levels"
  relative_position: str = "t5"
  max_relative_distance: int = 32
  relative_buckets: int = 32
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: str = "none"
  temporal_downsample: tuple[int, ...] = ()
  norm_groups: int = 32
  conv_impl: str = "lax"
  attention_chunk_size: int = 0
  prediction: str = "v"
  attention_impl: str = "reference"

  def __post_init__(self):
    for name in ("channel_mult", "attention_resolutions", "temporal_downsample"):
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    self._check_static()

  # ---- derived values ----
  @property
  def num_levels(self) -> int:
    return len(self.channel_mult)

  @property
  def embedding_dim(self) -> int:
    return self.emb_dim or 4 * self.base_channels

  def level_channels(self, level: int) -> int:
    return self.base_channels * self.channel_mult[level]

  def heads_for(self, channels: int) -> int:
    return self.num_heads or channels // self.head_dim

  def norm_groups_for(self, channels: int) -> int:
    return math.gcd(self.norm_groups, channels)

  # ---- validation ----
  def _check_static(self) -> None:
    enums = {
        "temporal_attention": TEMPORAL_ATTENTION, "relative_position": RELATIVE_POSITION,
        "param_dtype": DTYPES, "dtype": DTYPES, "remat": REMAT, "conv_impl": CONV_IMPL,
        "prediction": PREDICTION, "attention_impl": ATTENTION_IMPL,
    }
    for name, allowed in enums.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"UNetConfig.{name}={getattr(self, name)!r} is unknown; use one of {allowed}.")
    positive = ("in_channels", "out_channels", "base_channels", "num_res_blocks",
                "emb_mlp_layers", "image_size", "max_relative_distance", "relative_buckets", "norm_groups")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"UNetConfig.{name}={getattr(self, name)} must be >= 1.")
    if not self.channel_mult or min(self.channel_mult) < 1:
      raise ValueError(f"UNetConfig.channel_mult={self.channel_mult} needs >= 1 positive entries.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"UNetConfig.dropout={self.dropout} must be in [0, 1).")
    if self.num_classes < 0 or self.cond_channels < 0 or self.attention_chunk_size < 0:
      raise ValueError("UNetConfig.num_classes, cond_channels, attention_chunk_size must be >= 0.")
    bad = [lv for lv in self.temporal_downsample if not 0 <= lv < self.num_levels - 1]
    if bad:
      raise ValueError(
          f"UNetConfig.temporal_downsample={self.temporal_downsample}: levels {bad} have no "
          f"downsample; use levels in [0, {self.num_levels - 2}].")
    for level in range(self.num_levels):
      self._check_heads(self.level_channels(level))

  def _check_heads(self, channels: int) -> None:
    if self.num_heads:
      if channels % self.num_heads:
        raise ValueError(
            f"{channels} channels do not split into num_heads={self.num_heads}; change num_heads.")
    elif channels % self.head_dim:
      raise ValueError(
          f"{channels} channels do not split into heads of head_dim={self.head_dim}; "
          "change head_dim or base_channels/channel_mult.")
    if self.relative_position == "rotary" and (channels // self.heads_for(channels)) % 2:
      raise ValueError("rotary relative positions need an even head dimension.")

  def validate(self, num_frames: int, height: int, width: int) -> None:
    """Checks that a [T, H, W] input fits this architecture; ValueError says what to change."""
    if height != self.image_size:
      raise ValueError(
          f"Frame height {height} differs from UNetConfig.image_size={self.image_size}, which places "
          f"attention at sizes {self.attention_resolutions}; set model.image_size={height}.")
    factor = 2 ** (self.num_levels - 1)
    if height % factor or width % factor:
      raise ValueError(
          f"Frame size {height}x{width} must divide by 2**(levels-1) = {factor} for "
          f"channel_mult={self.channel_mult}; resize frames or use fewer levels.")
    t_factor = 2 ** len(self.temporal_downsample)
    if num_frames % t_factor:
      raise ValueError(
          f"num_frames={num_frames} must divide by {t_factor} for temporal_downsample="
          f"{self.temporal_downsample}; change the clip length or the levels.")
    if num_frames < 1:
      raise ValueError(f"num_frames={num_frames} must be >= 1.")


def vdm_ucf101_config(**overrides) -> UNetConfig:
  """VDM's UCF-101 16x64x64 model: 256 channels, (1,2,4,8), 2 blocks, attention 32/16/8."""
  base = dict(base_channels=256, channel_mult=(1, 2, 4, 8), num_res_blocks=2,
              attention_resolutions=(32, 16, 8), head_dim=64, emb_dim=1024, dropout=0.1, image_size=64,
              num_classes=101, prediction="eps")
  return UNetConfig(**{**base, **overrides})


def vdm_bair_config(**overrides) -> UNetConfig:
  """VDM's BAIR model: 128 channels, (1,2,3,4), 3 blocks, v-prediction, 1 conditioning frame."""
  base = dict(base_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
              attention_resolutions=(32, 16, 8), head_dim=64, emb_dim=512, cond_channels=3, image_size=64,
              prediction="v")
  return UNetConfig(**{**base, **overrides})


def small_config(**overrides) -> UNetConfig:
  """The CPU default (all UNetConfig defaults)."""
  return UNetConfig(**overrides)
