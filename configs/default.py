"""Default: the embedded moving_shapes data (8-frame clips at 16x16) on CPU.

    python train.py --config configs/default.py --workdir runs/default

About 9-10 minutes on a quiet 2-core CPU (3,000 steps of batch 8 at 5-7 steps/s, one XLA device
per core; a 0.33M-parameter U-Net, v-prediction): writes checkpoints, TensorBoard logs,
metrics.jsonl and sample videos (MP4/GIF/PNG) into the workdir; the samples show coloured blobs
moving over the black background. 3,000 rather than 1,500 steps: FVD 143 instead of 186 and a
third less colour flicker, for 5 more minutes (README, Evaluation).
Temporal attention follows every residual block ("all_levels": frames mix only there, the convs
being (1,3,3)): 20% slower a step than only at the 8x8 attention level, for a lower loss at every
step and a quarter less colour flicker (colour drift 3.5x real instead of 4.7x). For 32x32 (about 4x
the FLOPs a step): --config.data.resolution=32 --config.model.image_size=32.
Variant `configs/default.py:tiny` runs the whole pipeline in about a minute (tests use it).
Variant `configs/default.py:motion`: micro-conditioning on motion (Stable Video Diffusion) on
moving_shapes_speeds (slow or fast shapes), 3,000 steps (1,500 learn it only weakly); `sample.py
--motion X` then asks for more or less motion (scripts/motion_demo.py measures it).
"""

import ml_collections

from vdm_jax.config import base_config, cpu_recipe, shrink_to_tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.data.update(name="moving_shapes", num_frames=8, frame_stride=1, resolution=16,
                random_flip=False, image_frames=0)
  c.model.update(in_channels=3, out_channels=3, base_channels=16, channel_mult=(1, 2, 2),
                 num_res_blocks=1, attention_resolutions=(8,), image_size=16, head_dim=16,
                 norm_groups=8, num_classes=0, dropout=0.0, conv_impl="lax",
                 temporal_attention="all_levels")
  cpu_recipe(c)
  c.sample.update(num_samples=16, sampler="ddim", num_steps=64, fps=8)
  if variant == "tiny":
    shrink_to_tiny(c)
  elif variant == "motion":
    c.data.name = "moving_shapes_speeds"
    c.model.micro_conditioning = ("motion",)
    c.train.num_steps = 3000
  elif variant:
    raise ValueError(f"configs/default.py has variants '', 'tiny' and 'motion', not {variant!r}")
  return c
