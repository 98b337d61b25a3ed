"""Where the model and the diffusion core meet: a U-Net as a DenoiseFn, and its conditioning.

The diffusion core (vdm_jax.diffusion) sees only `DenoiseFn(z, logsnr, cond)`; this module makes
one from a U-Net's graphdef and parameters, and defines `cond`: a typed `Conditioning` pytree
that the trainer, the sampler and guidance build and transform.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from vdm_jax.diffusion import noise_level_from_logsnr
from vdm_jax.diffusion.protocols import DenoiseFn

__all__ = ["Conditioning", "DenoiseFn", "frame_condition", "make_denoise_fn", "null_cond"]


@struct.dataclass
class Conditioning:
  """What a U-Net is conditioned on besides the noisy video; every field optional (None).

  Attributes:
    labels: int32 [B] class labels in [0, num_classes]; num_classes is the null class.
    cond_frames: [B, T, H, W, C] known frames (zero where unknown), for frame-conditioned models.
    cond_mask: float [B, T], 1 where a frame is known.
    image_mask: bool [B, T], True for independent image frames (joint image-video training).
    lowres: [B, T, H, W, C] a cascade super-resolution stage's conditioning: the lower-resolution
      (or lower frame rate) video upsampled to the output shape and noised (vdm_jax.superres).
    aug_level: float [B], the augmentation noise level of `lowres`, in the model's normalised
      noise-level units (0 = clean, 1 = pure noise).
    fps: float [B], the clip's frame rate, for a model with "fps" in model.micro_conditioning.
    motion: float [B], the clip's motion score (data.curation.motion_score), for a model with
      "motion" in model.micro_conditioning. Never dropped by guidance (like `lowres`).
  """
  labels: jax.Array | None = None
  cond_frames: jax.Array | None = None
  cond_mask: jax.Array | None = None
  image_mask: jax.Array | None = None
  lowres: jax.Array | None = None
  aug_level: jax.Array | None = None
  fps: jax.Array | None = None
  motion: jax.Array | None = None

  def micro(self, names: tuple[str, ...]) -> jax.Array | None:
    """The micro-conditioning values [B, len(names)] float32 in the order of `names` (a model's
    micro_conditioning); None when names is empty; ValueError when one is missing."""
    if not names:
      return None
    missing = [n for n in names if getattr(self, n) is None]
    if missing:
      raise ValueError(f"the model is micro-conditioned on {names} but Conditioning has no {missing}.")
    return jnp.stack([jnp.asarray(getattr(self, n), jnp.float32) for n in names], axis=-1)


def make_denoise_fn(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, *,
                    deterministic: bool = True, dropout_rng: jax.Array | None = None) -> DenoiseFn:
  """denoise_fn(z, logsnr [B], cond: Conditioning | None) -> the model's prediction.

  Args:
    graphdef, params, rest: the U-Net split by vdm_jax.model.split_params.
    deterministic: dropout off (sampling) or on (training with model.dropout > 0).
    dropout_rng: the dropout stream's key when not deterministic.
  """
  # copy=True: fresh Variables in the caller's trace; the dropout stream's counters are mutated
  # during the call, which NNX forbids on Variables created outside the current jit/grad trace.
  model = nnx.merge(graphdef, params, rest, copy=True)
  if dropout_rng is not None and not deterministic:
    # Backbones are built with nnx.Rngs(seed): their Dropout layers draw from the 'default' stream
    # (reseeding a 'dropout' stream, which they do not have, once left every step the same masks).
    nnx.reseed(model, default=dropout_rng)

  def denoise_fn(z: jax.Array, logsnr: jax.Array, cond: Conditioning | None) -> jax.Array:
    cond = Conditioning() if cond is None else cond
    if not isinstance(cond, Conditioning):
      raise TypeError(f"cond must be a vdm_jax.denoiser.Conditioning, got {type(cond).__name__}")
    # The super-resolution inputs only when present: a backbone without them serves other models.
    sr = {} if cond.lowres is None and cond.aug_level is None else dict(
        lowres=cond.lowres, aug_level=cond.aug_level)
    names = getattr(model.config, "micro_conditioning", ())
    if names:
      sr["micro"] = cond.micro(names)
    return model(z, noise_level_from_logsnr(logsnr), deterministic=deterministic,
                 labels=cond.labels, cond_frames=cond.cond_frames, cond_mask=cond.cond_mask,
                 image_mask=cond.image_mask, **sr)

  return denoise_fn


def null_cond(cond: Conditioning, num_classes: int) -> Conditioning:
  """The unconditional version of `cond` for classifier-free guidance: null class, no frames.

  A cascade stage's `lowres` and `aug_level` are kept: the super-resolution conditioning is never
  dropped (guidance is over class and frames only).
  """
  labels = None if cond.labels is None else jnp.full_like(cond.labels, num_classes)
  if cond.cond_mask is None:
    return cond.replace(labels=labels)
  return cond.replace(labels=labels, cond_mask=jnp.zeros_like(cond.cond_mask),
                      cond_frames=jnp.zeros_like(cond.cond_frames))


def frame_condition(video: jax.Array, known: jax.Array) -> Conditioning:
  """Conditioning on known frames: video [B, T, H, W, C], known [B, T] in {0, 1}."""
  mask = known.astype(jnp.float32)
  return Conditioning(cond_frames=video * mask[:, :, None, None, None], cond_mask=mask)
