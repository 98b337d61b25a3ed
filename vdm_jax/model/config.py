"""Configuration of the backbones: the space-time factorised U-Net (VDM, Ho et al. 2022, section 3)
and the video diffusion transformer on space-time patches (DiT / Latte).

One frozen dataclass, one flat `config.model` section; `backbone` picks the network and each
backbone reads its own fields (plus the shared ones). Every field has a default that gives a small
CPU model. Built from an ml_collections ConfigDict as `ModelConfig(**dict(config.model))` (lists
become tuples); `UNetConfig` is the same class under its former name.
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
BACKBONE = ("unet", "dit")
DIT_ATTENTION = ("factorised", "full")
POSITION = ("rope", "learned")
# Attention kernels: the project's einsum reference, jax.nn.dot_product_attention's XLA or cuDNN flash
# implementation, or "auto" (cuDNN on GPU with a 16-bit dtype, XLA elsewhere).
ATTENTION_IMPL = ("reference", "xla", "cudnn", "auto")
# Micro-conditioning (Stable Video Diffusion): per-clip scalars a model may be conditioned on.
MICRO_CONDITIONING = ("fps", "motion")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of `vdm_jax.model.UNet` (backbone "unet") or `vdm_jax.model.DiT` ("dit").

  Shared by both backbones: in_channels, out_channels, image_size, head_dim, num_heads, emb_dim,
  emb_mlp_layers, dropout, num_classes, cond_channels, param_dtype, dtype, remat,
  attention_chunk_size, prediction. U-Net only: base_channels, channel_mult, num_res_blocks,
  attention_resolutions, temporal_attention, relative_position, max_relative_distance,
  relative_buckets, temporal_downsample, norm_groups, conv_impl. DiT only: patch_size,
  temporal_patch_size, hidden_size, depth, mlp_ratio, dit_attention, position, max_frames.

  Attributes:
    backbone: "unet" (the VDM U-Net) or "dit" (a transformer on space-time patches).
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
    patch_size: DiT: spatial side p of a tubelet (frames must divide by it in H and W).
    temporal_patch_size: DiT: frames p_t per tubelet (T must divide by it). With p_t > 1 a token
      spans several frames, so image frames (joint image-video training) cannot be kept apart.
    hidden_size: DiT: token width D (heads: num_heads, or D // head_dim).
    depth: DiT: number of transformer blocks.
    mlp_ratio: DiT: MLP hidden width = int(mlp_ratio * hidden_size).
    dit_attention: DiT: "factorised" (spatial attention within each frame, then temporal attention
      at each patch position, in every block; Latte) or "full" (joint space-time attention).
    position: DiT: "rope" (3D rotary on queries and keys: the head dimension split over t, h, w;
      any clip length or frame size) or "learned" (additive axial tables over time, rows and
      columns, sized by max_frames and image_size). The U-Net's relative_position is not used.
    max_frames: DiT with learned positions: the longest clip (frames) the time table covers.
    lowres_channels: channels of a super-resolution stage's conditioning video (the previous
      stage's output upsampled to this stage's shape, concatenated as channels; its augmentation
      level is embedded like the noise level); 0 = not a cascade stage (vdm_jax.superres).
    attention_impl: "reference" (einsum, softmax in float32), "xla" or "cudnn"
      (jax.nn.dot_product_attention's implementations) or "auto" (cudnn on GPU with a 16-bit dtype,
      else xla). The parameters are the same under every choice.
    micro_conditioning: per-clip scalars the model is conditioned on (Stable Video Diffusion's
      micro-conditioning), from MICRO_CONDITIONING: "fps" (frame rate) and "motion" (motion
      score); each is embedded like the noise level (sinusoidal features of log1p(value), an MLP
      of its own, added to the embedding). () = none: no parameters, outputs as before.
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
  backbone: str = "unet"
  patch_size: int = 2
  temporal_patch_size: int = 1
  hidden_size: int = 64
  depth: int = 4
  mlp_ratio: float = 4.0
  dit_attention: str = "factorised"
  position: str = "rope"
  max_frames: int = 32
  # Cascade super-resolution stage (vdm_jax.superres).
  lowres_channels: int = 0
  attention_impl: str = "reference"
  micro_conditioning: tuple[str, ...] = ()

  def __post_init__(self):
    for name in ("channel_mult", "attention_resolutions", "temporal_downsample"):
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    if isinstance(self.micro_conditioning, str):
      raise ValueError(f"ModelConfig.micro_conditioning={self.micro_conditioning!r} must be a tuple of "
                       f"names from {MICRO_CONDITIONING}, e.g. ('motion',).")
    object.__setattr__(self, "micro_conditioning", tuple(str(v) for v in self.micro_conditioning))
    self._check_static()

  # ---- derived values ----
  @property
  def num_levels(self) -> int:
    return len(self.channel_mult)

  @property
  def embedding_dim(self) -> int:
    if self.backbone == "dit":
      return self.emb_dim or self.hidden_size
    return self.emb_dim or 4 * self.base_channels

  @property
  def mlp_dim(self) -> int:
    """DiT: hidden width of the MLP in every block."""
    return int(self.mlp_ratio * self.hidden_size)

  def level_channels(self, level: int) -> int:
    return self.base_channels * self.channel_mult[level]

  def heads_for(self, channels: int) -> int:
    return self.num_heads or channels // self.head_dim

  def norm_groups_for(self, channels: int) -> int:
    return math.gcd(self.norm_groups, channels)

  # ---- validation ----
  def _check_static(self) -> None:
    enums = {
        "backbone": BACKBONE, "temporal_attention": TEMPORAL_ATTENTION,
        "relative_position": RELATIVE_POSITION, "param_dtype": DTYPES, "dtype": DTYPES, "remat": REMAT,
        "conv_impl": CONV_IMPL, "prediction": PREDICTION, "dit_attention": DIT_ATTENTION,
        "position": POSITION, "attention_impl": ATTENTION_IMPL,
    }
    for name, allowed in enums.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} is unknown; use one of {allowed}.")
    self._check_positive(("in_channels", "out_channels", "emb_mlp_layers", "image_size"))
    micro = self.micro_conditioning
    if set(micro) - set(MICRO_CONDITIONING) or len(set(micro)) != len(micro):
      raise ValueError(f"ModelConfig.micro_conditioning={micro} must name distinct features from "
                       f"{MICRO_CONDITIONING}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"ModelConfig.dropout={self.dropout} must be in [0, 1).")
    if self.num_classes < 0 or self.cond_channels < 0 or self.attention_chunk_size < 0:
      raise ValueError("ModelConfig.num_classes, cond_channels, attention_chunk_size must be >= 0.")
    if self.backbone == "dit":
      self._check_dit()
    else:
      self._check_unet()

  def _check_positive(self, names: tuple[str, ...]) -> None:
    for name in names:
      if getattr(self, name) < 1:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be >= 1.")

  def _check_unet(self) -> None:
    self._check_positive(("base_channels", "num_res_blocks", "max_relative_distance",
                          "relative_buckets", "norm_groups"))
    if not self.channel_mult or min(self.channel_mult) < 1:
      raise ValueError(f"ModelConfig.channel_mult={self.channel_mult} needs >= 1 positive entries.")
      raise ValueError("ModelConfig.num_classes, cond_channels, attention_chunk_size must be >= 0.")
    if self.lowres_channels < 0:
      raise ValueError(f"ModelConfig.lowres_channels={self.lowres_channels} must be >= 0.")
    bad = [lv for lv in self.temporal_downsample if not 0 <= lv < self.num_levels - 1]
    if bad:
      raise ValueError(
          f"ModelConfig.temporal_downsample={self.temporal_downsample}: levels {bad} have no "
          f"downsample; use levels in [0, {self.num_levels - 2}].")
    for level in range(self.num_levels):
      channels = self.level_channels(level)
      self._check_heads(channels)
      if self.relative_position == "rotary" and (channels // self.heads_for(channels)) % 2:
        raise ValueError("rotary relative positions need an even head dimension.")

  def _check_dit(self) -> None:
    self._check_positive(("patch_size", "temporal_patch_size", "hidden_size", "depth", "max_frames"))
    if not self.mlp_dim >= 1:
      raise ValueError(f"ModelConfig.mlp_ratio={self.mlp_ratio} gives no MLP units; use mlp_ratio > 0.")
    self._check_heads(self.hidden_size)
    head = self.hidden_size // self.heads_for(self.hidden_size)
    if self.position == "rope" and (head % 2 or head < 6):
      raise ValueError(f"3D rotary positions need an even head dimension >= 6 (t, h, w each get an even "
                       f"share); got {head}: change head_dim/num_heads or use model.position='learned'.")
    if self.position == "learned" and (self.image_size % self.patch_size
                                       or self.max_frames % self.temporal_patch_size):
      raise ValueError(f"learned positions need image_size={self.image_size} divisible by patch_size="
                       f"{self.patch_size} and max_frames={self.max_frames} by temporal_patch_size="
                       f"{self.temporal_patch_size}; change them.")

  def _check_heads(self, channels: int) -> None:
    if self.num_heads:
      if channels % self.num_heads:
        raise ValueError(
            f"{channels} channels do not split into num_heads={self.num_heads}; change num_heads.")
    elif channels % self.head_dim:
      raise ValueError(
          f"{channels} channels do not split into heads of head_dim={self.head_dim}; change head_dim "
          + ("or hidden_size." if self.backbone == "dit" else "or base_channels/channel_mult."))

  def validate(self, num_frames: int, height: int, width: int, image_frames: int = 0) -> None:
    """Checks that a [T, H, W] input (`image_frames` of the T independent images) fits this
    architecture; ValueError says in one line what to change."""
    if num_frames < 1:
      raise ValueError(f"num_frames={num_frames} must be >= 1.")
    if self.backbone == "dit":
      self._validate_dit(num_frames, height, width, image_frames)
      return
    if height != self.image_size:
      raise ValueError(
          f"Frame height {height} differs from ModelConfig.image_size={self.image_size}, which places "
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

  def _validate_dit(self, num_frames: int, height: int, width: int, image_frames: int) -> None:
    p, pt = self.patch_size, self.temporal_patch_size
    if height % p or width % p:
      raise ValueError(f"Frame size {height}x{width} does not divide into {p}x{p} patches; change "
                       f"model.patch_size or the resolution.")
    if num_frames % pt:
      raise ValueError(f"{num_frames} frames do not divide into tubelets of temporal_patch_size={pt}; "
                       "change model.temporal_patch_size or the clip length.")
    if image_frames and pt > 1:
      raise ValueError(f"{image_frames} image frames cannot be kept independent in tubelets of "
                       f"temporal_patch_size={pt} frames; set model.temporal_patch_size=1 or "
                       "data.image_frames=0.")
    if self.position == "learned" and (height > self.image_size or width > self.image_size
                                       or num_frames > self.max_frames):
      raise ValueError(f"learned positions cover {self.max_frames} frames of up to {self.image_size}x"
                       f"{self.image_size}, not {num_frames}x{height}x{width}; raise model.max_frames/"
                       "image_size or use model.position='rope'.")


UNetConfig = ModelConfig  # the former name, kept while callers move to ModelConfig


def vdm_ucf101_config(**overrides) -> ModelConfig:
  """VDM's UCF-101 16x64x64 model: 256 channels, (1,2,4,8), 2 blocks, attention 32/16/8."""
  base = dict(base_channels=256, channel_mult=(1, 2, 4, 8), num_res_blocks=2,
              attention_resolutions=(32, 16, 8), head_dim=64, emb_dim=1024, dropout=0.1, image_size=64,
              num_classes=101, prediction="eps")
  return ModelConfig(**{**base, **overrides})


def vdm_bair_config(**overrides) -> ModelConfig:
  """VDM's BAIR model: 128 channels, (1,2,3,4), 3 blocks, v-prediction, 1 conditioning frame."""
  base = dict(base_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
              attention_resolutions=(32, 16, 8), head_dim=64, emb_dim=512, cond_channels=3, image_size=64,
              prediction="v")
  return ModelConfig(**{**base, **overrides})


def small_config(**overrides) -> ModelConfig:
  """The CPU default (all ModelConfig defaults)."""
  return ModelConfig(**overrides)
