"""UCF-101, VDM's class-conditional 16x64x64 setup (Ho, Salimans et al. 2022, section 4.1).

    python train.py --config configs/ucf101.py --workdir runs/ucf101

Data: TFDS `ucf101` (labels 0..100); prepare it once (manual download, see the README).
Model: VDM's UCF-101 U-Net (256 channels, multipliers (1, 2, 4, 8), 2 res blocks, attention at
32/16/8, head dim 64, embedding 1024, dropout 0.1), class-conditional with 10% null-class dropout
for classifier-free guidance, Adam lr 3e-4 beta2 0.99, batch 128, EMA 0.9999. VDM trained eps here
(set --config.diffusion.prediction=v --config.model.prediction=v for v, which this project
recommends for video). VDM reports FID 295 / IS 57 (unconditional). `:tiny` keeps the
class-conditional pipeline at CPU size.
Compute in bfloat16 with float32 master weights and attention through jax.nn.dot_product_attention
(cuDNN flash on GPU): the accelerator default; `:tiny` computes in float32. Check that a slice fits
before renting it: python scripts/aot_compile.py --config configs/ucf101.py --topology v5p-8
"""

import ml_collections

from vdm_jax.config import base_config, shrink_to_tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.data.update(name="ucf101", train_split="train", eval_split="test", num_frames=16,
                frame_stride=1, resolution=64, random_flip=True)
  c.model.update(in_channels=3, out_channels=3, base_channels=256, channel_mult=(1, 2, 4, 8),
                 num_res_blocks=2, attention_resolutions=(32, 16, 8), image_size=64, head_dim=64,
                 emb_dim=1024, dropout=0.1, num_classes=101, prediction="eps")
  c.model.update(dtype="bfloat16", param_dtype="float32", attention_impl="auto")  # accelerator default
  c.diffusion.update(prediction="eps", weighting="eps")
  c.optim.update(learning_rate=3e-4, b2=0.99, warmup_steps=1000, ema_decay=0.9999)
  c.train.update(global_batch_size=128, num_steps=500_000, class_dropout=0.1, log_every=100,
                 sample_every=5000, checkpoint_every=2500)
  c.sample.update(num_samples=16, sampler="ancestral", num_steps=256, gamma=0.1,
                  guidance_weight=1.0)
  if variant == "tiny":
    shrink_to_tiny(c)  # float32 compute, the CPU default
  elif variant:
    raise ValueError(f"configs/ucf101.py has variants '' and 'tiny', not {variant!r}")
  return c
