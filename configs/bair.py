"""BAIR robot pushing, VDM's setup: predict 15 frames from 1 (Ho, Salimans et al. 2022, section 4.2).

    python train.py --config configs/bair.py --workdir runs/bair

Data: TFDS `bair_robot_pushing_small` (64x64, 30 frames); prepare it once with network:
`tfds build bair_robot_pushing_small --file_format=array_record --data_dir=DIR`.
Model: VDM's BAIR U-Net (128 channels, multipliers (1, 2, 3, 4), 3 res blocks, attention at 32/16/8),
v-prediction, the first frame given on extra input channels (frame conditioning), AdamW lr 2e-4,
weight decay 0.01. VDM reports FVD 66.9 (1 -> 15 frames) for its model; reproducing that is a
TPU-pod job. `:tiny` keeps the frame-conditioned pipeline at CPU size (tests use it with mock data).
Compute in bfloat16 with float32 master weights and attention through jax.nn.dot_product_attention
(cuDNN flash on GPU): the accelerator default; `:tiny` computes in float32. Check that a slice fits
before renting it: python scripts/aot_compile.py --config configs/bair.py --topology v5p-8
"""

import ml_collections

from vdm_jax.config import base_config, shrink_to_tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.data.update(name="bair_robot_pushing_small", train_split="train", eval_split="test",
                num_frames=16, resolution=64)
  c.model.update(in_channels=3, out_channels=3, base_channels=128, channel_mult=(1, 2, 3, 4),
                 num_res_blocks=3, attention_resolutions=(32, 16, 8), image_size=64, head_dim=64,
                 emb_dim=512, cond_channels=3, prediction="v")
  c.model.update(dtype="bfloat16", param_dtype="float32", attention_impl="auto")  # accelerator default
  c.diffusion.update(prediction="v", weighting="v")
  c.optim.update(optimizer="adamw", learning_rate=2e-4, b2=0.99, weight_decay=0.01,
                 warmup_steps=1000, ema_decay=0.9999)
  c.train.update(global_batch_size=64, num_steps=500_000, cond_frames=1, cond_dropout=0.1,
                 log_every=100, sample_every=5000, checkpoint_every=2500)
  c.sample.update(num_samples=16, sampler="ancestral", num_steps=256, gamma=0.0)
  if variant == "tiny":
    shrink_to_tiny(c)  # float32 compute, the CPU default
    c.train.cond_frames = 1
  elif variant:
    raise ValueError(f"configs/bair.py has variants '' and 'tiny', not {variant!r}")
  return c
