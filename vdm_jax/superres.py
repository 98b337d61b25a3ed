"""Cascade stages: the degradation a super-resolution stage undoes, and noise-conditioning augmentation.

Imagen Video (Ho et al. 2022, section 2.5) and VDM reach high resolution with a cascade: a base
model, then temporal (TSR) and spatial (SSR) super-resolution stages, each a video diffusion model
conditioned on the previous stage's output, upsampled to its own shape and concatenated as channels.
One definition serves training (the conditioning made from the batch's own clip) and sampling (the
previous stage's output):

    lowres_of(x) = upsample(downsample(x))          the clean conditioning, the stage's output shape
    downsample:  spatial area average over s x s pixels; temporal keep frames 0, k, 2k, ...
    upsample:    spatial "bilinear" (jax.image.resize, half-pixel centres) or "nearest" (repeat);
                 temporal "repeat" (each kept frame k times) or "linear" (between kept frames,
                 the last kept frame held after the end)

so downsample(upsample(y)) == y for "nearest" with area averaging, and for either temporal method.
Noise-conditioning augmentation noises the conditioning with the cosine schedule's
q(z_s | x) = N(cos(s pi/2) x, sin(s pi/2)^2 I) at a level s in [0, 1], the same normalised angle
the model's diffusion noise level uses (diffusion.noise_level_from_logsnr), and tells the model s:
s drawn per example from [aug_level_min, aug_level_max] in training, a fixed level at sampling.
Pure jnp functions; the typed `cascade` config section lives here too (config.py validates it).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

SPATIAL_UPSAMPLE = ("bilinear", "nearest")
TEMPORAL_UPSAMPLE = ("repeat", "linear")


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
  """The `cascade` section: what a super-resolution stage is conditioned on (inactive at 1, 1).

  Attributes:
    spatial_factor: s, the stage's output H and W over its conditioning's (1 = not spatial SR).
    temporal_factor: k, the stage's output frames over its conditioning's (1 = not temporal SR).
    spatial_upsample: "bilinear" or "nearest": how the conditioning is brought back to H x W.
    temporal_upsample: "repeat" or "linear": how it is brought back to T frames.
    aug_level_min, aug_level_max: training draws the augmentation level per example uniformly
      from this range (normalised noise level, 0 = clean, 1 = pure noise).
    sample_aug_level: the fixed level sampling noises the previous stage's output with.
  """
  spatial_factor: int = 1
  temporal_factor: int = 1
  spatial_upsample: str = "bilinear"
  temporal_upsample: str = "repeat"
  aug_level_min: float = 0.0
  aug_level_max: float = 0.5
  sample_aug_level: float = 0.1

  def __post_init__(self):
    for name, allowed in (("spatial_upsample", SPATIAL_UPSAMPLE),
                          ("temporal_upsample", TEMPORAL_UPSAMPLE)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"cascade.{name}={getattr(self, name)!r} is unknown; use one of {allowed}")
    for name in ("spatial_factor", "temporal_factor"):
      if not getattr(self, name) >= 1:
        raise ValueError(f"cascade.{name}={getattr(self, name)!r} is out of range: it must be >= 1; "
                         f"change --config.cascade.{name}")
    for name in ("aug_level_min", "aug_level_max", "sample_aug_level"):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f"cascade.{name}={getattr(self, name)!r} is out of range: it must be in "
                         f"[0, 1]; change --config.cascade.{name}")
    if not self.aug_level_min <= self.aug_level_max:
      raise ValueError(f"cascade.aug_level_min={self.aug_level_min} > aug_level_max="
                       f"{self.aug_level_max}; swap them or set them equal")

  @property
  def is_stage(self) -> bool:
    """Whether this is a super-resolution stage (a factor > 1)."""
    return self.spatial_factor > 1 or self.temporal_factor > 1


def check_cascade(cascade: CascadeConfig, lowres_channels: int, channels: int, num_frames: int,
                  resolution: int, image_frames: int = 0) -> None:
  """ValueError (one line) when the cascade section and the model/data disagree."""
  if not cascade.is_stage:
    if lowres_channels:
      raise ValueError(f"model.lowres_channels={lowres_channels} needs a super-resolution stage: set "
                       "--config.cascade.spatial_factor or temporal_factor > 1, or lowres_channels=0")
    return
  if lowres_channels != channels:
    raise ValueError(f"cascade factors (spatial {cascade.spatial_factor}, temporal "
                     f"{cascade.temporal_factor}) make this a super-resolution stage: set "
                     f"model.lowres_channels={channels} (the data's channels), got {lowres_channels}")
  if num_frames % cascade.temporal_factor or resolution % cascade.spatial_factor:
    raise ValueError(f"data.num_frames={num_frames} and data.resolution={resolution} must divide by "
                     f"cascade.temporal_factor={cascade.temporal_factor} and spatial_factor="
                     f"{cascade.spatial_factor}")
  if image_frames:
    raise ValueError(f"data.image_frames={image_frames} cannot be combined with a cascade stage "
                     "(the conditioning is made from whole clips); set data.image_frames=0")


def downsample(video: jax.Array, spatial_factor: int, temporal_factor: int) -> jax.Array:
  """[B, T, H, W, C] -> [B, T / k, H / s, W / s, C]: frames 0, k, 2k, ..., s x s area averages."""
  b, t, h, w, c = video.shape
  s, k = spatial_factor, temporal_factor
  if t % k or h % s or w % s:
    raise ValueError(f"video {video.shape} does not divide by temporal factor {k} and spatial "
                     f"factor {s}")
  x = video[:, ::k]
  return x.reshape(b, t // k, h // s, s, w // s, s, c).mean(axis=(3, 5))


def upsample(video: jax.Array, spatial_factor: int, temporal_factor: int,
             spatial_method: str = "bilinear", temporal_method: str = "repeat") -> jax.Array:
  """[B, T, H, W, C] -> [B, T k, H s, W s, C] (methods: see the module docstring), float32."""
  if spatial_method not in SPATIAL_UPSAMPLE or temporal_method not in TEMPORAL_UPSAMPLE:
    raise ValueError(f"upsample methods {spatial_method!r}, {temporal_method!r}; use one of "
                     f"{SPATIAL_UPSAMPLE} and one of {TEMPORAL_UPSAMPLE}")
  x = jnp.asarray(video, jnp.float32)
  b, t, h, w, c = x.shape
  s, k = spatial_factor, temporal_factor
  if s > 1 and spatial_method == "nearest":
    x = jnp.repeat(jnp.repeat(x, s, axis=2), s, axis=3)
  elif s > 1:
    x = jax.image.resize(x, (b, t, h * s, w * s, c), "bilinear", antialias=False)
  if k > 1 and temporal_method == "repeat":
    x = jnp.repeat(x, k, axis=1)
  elif k > 1:
    pos = jnp.arange(t * k) / k  # position of each output frame among the kept ones
    lo = jnp.minimum(jnp.floor(pos).astype(jnp.int32), t - 1)
    hi = jnp.minimum(lo + 1, t - 1)
    a = jnp.clip(pos - lo, 0.0, 1.0)[None, :, None, None, None]
    x = (1.0 - a) * x[:, lo] + a * x[:, hi]
  return x


def lowres_of(video: jax.Array, cascade: CascadeConfig) -> jax.Array:
  """The clean conditioning of a stage for its own clip: upsample(downsample(video)), same shape."""
  small = downsample(video, cascade.spatial_factor, cascade.temporal_factor)
  return upsample_for(small, cascade)


def upsample_for(small: jax.Array, cascade: CascadeConfig) -> jax.Array:
  """The previous stage's output [B, T / k, H / s, W / s, C] at this stage's shape (float32)."""
  return upsample(small, cascade.spatial_factor, cascade.temporal_factor, cascade.spatial_upsample,
                  cascade.temporal_upsample)


def augment(lowres: jax.Array, aug_level: jax.Array, noise: jax.Array) -> jax.Array:
  """Noise-conditioning augmentation: z_s = cos(s pi/2) x + sin(s pi/2) eps per example.

  Args:
    lowres: [B, T, H, W, C] clean conditioning.
    aug_level: [B] levels s in [0, 1] (the model's normalised noise-level units).
    noise: eps, the shape of lowres.
  Returns:
    [B, T, H, W, C] float32; equal to lowres where s = 0.
  """
  phi = (0.5 * math.pi) * jnp.asarray(aug_level, jnp.float32)[:, None, None, None, None]
  return jnp.cos(phi) * jnp.asarray(lowres, jnp.float32) + jnp.sin(phi) * noise


def training_lowres(video: jax.Array, rng: jax.Array, cascade: CascadeConfig
                    ) -> tuple[jax.Array, jax.Array]:
  """(augmented conditioning [B, T, H, W, C], aug_level [B]) for a batch of high-res clips.

  The level is drawn per example, uniform in [aug_level_min, aug_level_max].
  """
  k_level, k_noise = jax.random.split(rng)
  b = video.shape[0]
  level = jax.random.uniform(k_level, (b,), jnp.float32, cascade.aug_level_min,
                             cascade.aug_level_max)
  clean = lowres_of(video, cascade)
  return augment(clean, level, jax.random.normal(k_noise, clean.shape, jnp.float32)), level
