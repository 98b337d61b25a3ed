"""Cascade stage 3 on CPU: spatial super-resolution of moving_shapes, 16x16 -> 32x32 at 16 frames.

    python train.py --config configs/cascade_ssr.py --workdir runs/ssr
    python sample.py --cascade runs/base,runs/tsr,runs/ssr   (see configs/cascade_tsr.py)

A video diffusion model of 16 consecutive 32x32 frames (moving_shapes' native size: data.resolution
32, no resize) conditioned on its own clip area-averaged to 16x16 and resized back bilinearly
(cascade.spatial_factor=2), noised at a level drawn per example in [0, 0.5] (noise-conditioning
augmentation; sampling uses 0.1). Its input is configs/cascade_tsr.py's output (16 frames of 16x16).
A 3-level U-Net like default.py's one size up (attention only at 8x8, temporal attention after it:
the 16x16 and 32x32 levels are per-frame convolutions), 323,603 parameters; a clip has 8x the
pixels of a base clip.
Variant `:tiny` is default.py's tiny size (8 frames of 16x16 from 8x8).
"""

import ml_collections

from vdm_jax.config import base_config, cpu_recipe, shrink_to_tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.data.update(name="moving_shapes", num_frames=16, frame_stride=1, resolution=32,
                random_flip=False, image_frames=0)
  c.model.update(in_channels=3, out_channels=3, base_channels=16, channel_mult=(1, 2, 2),
                 num_res_blocks=1, attention_resolutions=(8,), image_size=32, head_dim=16,
                 norm_groups=8, num_classes=0, dropout=0.0, conv_impl="lax",
                 temporal_attention="attention_levels", lowres_channels=3)
  c.cascade.update(spatial_factor=2, temporal_factor=1, spatial_upsample="bilinear",
                   aug_level_min=0.0, aug_level_max=0.5, sample_aug_level=0.1)
  cpu_recipe(c)
  c.sample.update(num_samples=16, sampler="ddim", num_steps=64, fps=16)
  if variant == "tiny":
    shrink_to_tiny(c)
  elif variant:
    raise ValueError(f"configs/cascade_ssr.py has variants '' and 'tiny', not {variant!r}")
  return c
