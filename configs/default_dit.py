"""Default with a transformer: the moving_shapes setup of configs/default.py, backbone "dit".

    python train.py --config configs/default_dit.py --workdir runs/default_dit

The same data (8-frame clips at 16x16), diffusion, optimiser and schedule as configs/default.py; the
network is a video DiT (vdm_jax/model/dit.py) of width 64, 4 blocks, 4 heads of 16, 2x2 patches
(8x8 = 64 tokens a frame), factorised space-then-time attention and 3D rotary positions, sized so a
train step costs what the default U-Net's does: 7.39 vs 7.45 GFLOP of matmuls for a batch of 8
(forward + backward, vdm_jax/train/flops.py), 7.78 vs 6.93 GFLOP by XLA's cost analysis of the
compiled step (benchmarks/train_step.py --configs default default_dit), with 0.43M parameters
against the U-Net's 0.33M. On a quiet 2-core AMD EPYC its step takes 0.455 s against the U-Net's
0.154 s (small matmuls, memory-bound norms and softmax), and at equal CPU time it scores FVD 208
against the U-Net's 118 (README, Backbones; studies/backbones.py). The same switch on any config:
--config.model.backbone=dit (the DiT fields' defaults are this model). `:tiny` runs the pipeline in
about a minute.
"""

import ml_collections

from vdm_jax.config import base_config, cpu_recipe, shrink_to_tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.data.update(name="moving_shapes", num_frames=8, frame_stride=1, resolution=16,
                random_flip=False, image_frames=0)
  c.model.update(backbone="dit", in_channels=3, out_channels=3, image_size=16, patch_size=2,
                 temporal_patch_size=1, hidden_size=64, depth=4, head_dim=16, mlp_ratio=4.0,
                 dit_attention="factorised", position="rope", num_classes=0, dropout=0.0)
  cpu_recipe(c)
  c.sample.update(num_samples=16, sampler="ddim", num_steps=64, fps=8)
  if variant == "tiny":
    shrink_to_tiny(c)
    c.model.update(hidden_size=32, depth=2, head_dim=16)
  elif variant:
    raise ValueError(f"configs/default_dit.py has variants '' and 'tiny', not {variant!r}")
  return c
