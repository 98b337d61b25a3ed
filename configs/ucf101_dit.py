"""UCF-101 16x64x64, class-conditional, with a pod-size video DiT instead of VDM's U-Net.

    python train.py --config configs/ucf101_dit.py --workdir runs/ucf101_dit

Data, diffusion, optimiser, batch and sampling as configs/ucf101.py (VDM's setup, eps-prediction,
10% null-class dropout for classifier-free guidance). Model: a DiT-XL-sized transformer (Peebles &
Xie 2023; Latte, Ma et al. 2024): width 1152, 28 blocks, 16 heads of 72, MLP ratio 4, 4x4 patches
(16x16 = 256 tokens a frame, 4,096 a clip: Latte's token grid), factorised spatial-then-temporal
attention in every block, 3D rotary positions, adaLN-Zero on the noise level and class:
935,224,752 parameters (count_params; tests/test_configs.py), against the U-Net's 1,165,696,003.
Shard it like the U-Net: --config.mesh.fsdp=N (parameters) and --config.mesh.tensor=M (heads, MLP);
bfloat16 compute with float32 master weights, block remat and jax.nn attention (cuDNN on GPU) are its
accelerator defaults; `:tiny` (float32, reference attention) keeps the
class-conditional pipeline at CPU size.
"""

import ml_collections

from vdm_jax.config import base_config, shrink_to_tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.data.update(name="ucf101", train_split="train", eval_split="test", num_frames=16,
                frame_stride=1, resolution=64, random_flip=True)
  c.model.update(backbone="dit", in_channels=3, out_channels=3, image_size=64, patch_size=4,
                 temporal_patch_size=1, hidden_size=1152, depth=28, head_dim=72, mlp_ratio=4.0,
                 dit_attention="factorised", position="rope", dropout=0.0, num_classes=101,
                 prediction="eps", dtype="bfloat16", param_dtype="float32", remat="block",
                 attention_impl="auto")
  c.diffusion.update(prediction="eps", weighting="eps")
  c.optim.update(learning_rate=3e-4, b2=0.99, warmup_steps=1000, ema_decay=0.9999)
  c.train.update(global_batch_size=128, num_steps=500_000, class_dropout=0.1, log_every=100,
                 sample_every=5000, checkpoint_every=2500)
  c.sample.update(num_samples=16, sampler="ancestral", num_steps=256, gamma=0.1,
                  guidance_weight=1.0)
  if variant == "tiny":
    shrink_to_tiny(c)
    c.model.update(hidden_size=32, depth=2, head_dim=16, patch_size=2)
  elif variant:
    raise ValueError(f"configs/ucf101_dit.py has variants '' and 'tiny', not {variant!r}")
  return c
