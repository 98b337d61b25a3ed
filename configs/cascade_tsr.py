"""Cascade stage 2 on CPU: temporal super-resolution of moving_shapes, 8 -> 16 frames at 16x16.

    python train.py --config configs/default.py --workdir runs/base --config.data.frame_stride=2
    python train.py --config configs/cascade_tsr.py --workdir runs/tsr
    python train.py --config configs/cascade_ssr.py --workdir runs/ssr
    python sample.py --cascade runs/base,runs/tsr,runs/ssr

A video diffusion model of 16 consecutive frames (moving_shapes videos have 20; data.frame_stride=1)
conditioned on every other frame of its own clip (cascade.temporal_factor=2: frames 0, 2, ..., 14,
repeated back to 16 frames, noised at a level drawn per example in [0, 0.5]; noise-conditioning
augmentation). Its 8 conditioning frames are 8 frames at stride 2, so the base model it refines must
be trained at stride 2: configs/default.py with --config.data.frame_stride=2 (the motion between two
of the base's frames is then the motion between two of this stage's conditioning frames). Otherwise
default.py's U-Net and schedule, with the extra 3 input channels and the augmentation-level
embedding (model.lowres_channels=3): 340,115 parameters. Variant `:tiny` is default.py's tiny size
(8 frames from 4).
"""

import ml_collections

from vdm_jax.config import base_config, cpu_recipe, shrink_to_tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.data.update(name="moving_shapes", num_frames=16, frame_stride=1, resolution=16,
                random_flip=False, image_frames=0)
  c.model.update(in_channels=3, out_channels=3, base_channels=16, channel_mult=(1, 2, 2),
                 num_res_blocks=1, attention_resolutions=(8,), image_size=16, head_dim=16,
                 norm_groups=8, num_classes=0, dropout=0.0, conv_impl="lax",
                 temporal_attention="all_levels", lowres_channels=3)
  c.cascade.update(temporal_factor=2, spatial_factor=1, temporal_upsample="repeat",
                   aug_level_min=0.0, aug_level_max=0.5, sample_aug_level=0.1)
  cpu_recipe(c)
  c.sample.update(num_samples=16, sampler="ddim", num_steps=64, fps=16)
  if variant == "tiny":
    shrink_to_tiny(c)
  elif variant:
    raise ValueError(f"configs/cascade_tsr.py has variants '' and 'tiny', not {variant!r}")
  return c
