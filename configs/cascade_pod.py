"""A pod-size cascade on UCF-101 (Imagen Video / VDM style): the shape, one config per stage.

    python train.py --config configs/cascade_pod.py:base --workdir /mnt/bucket/base   8 x 32 x 32
    python train.py --config configs/cascade_pod.py:tsr --workdir /mnt/bucket/tsr     16 x 32 x 32
    python train.py --config configs/cascade_pod.py:ssr --workdir /mnt/bucket/ssr     16 x 128 x 128
    python sample.py --cascade /mnt/bucket/base,/mnt/bucket/tsr,/mnt/bucket/ssr

Class-conditional throughout (labels pass from stage to stage; 10% null class for classifier-free
guidance). The base samples 8 frames at stride 4 (data.frame_stride=4), the TSR stage doubles the
frame rate (16 frames at stride 2, conditioned on every other frame, repeated), the SSR stage goes
from 32x32 to 128x128 (area average down by 4, bilinear back up). Super-resolution stages train with
noise-conditioning augmentation at levels in [0, 0.5] and sample at 0.1; v-prediction; bfloat16
compute with float32 parameters, block rematerialisation, FSDP over 8 devices of a pod slice.
Parameters (exact; tests/test_configs.py asserts them):

    base  8 x 32 x 32     256 ch, (1, 2, 4, 4), 3 blocks, attention 16/8         603,215,107
    tsr   16 x 32 x 32    256 ch, (1, 2, 4, 4), 2 blocks, attention 16/8         457,969,923
    ssr   16 x 128 x 128  128 ch, (1, 2, 4, 8), 2 blocks, attention 16/8         292,435,971
"""

import ml_collections

from vdm_jax.config import base_config

STAGES = {
    # stage: (frames, stride, resolution, U-Net, cascade section)
    "base": (8, 4, 32, dict(base_channels=256, channel_mult=(1, 2, 4, 4), num_res_blocks=3,
                            attention_resolutions=(16, 8)), {}),
    "tsr": (16, 2, 32, dict(base_channels=256, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                            attention_resolutions=(16, 8), lowres_channels=3),
            dict(temporal_factor=2, temporal_upsample="repeat")),
    "ssr": (16, 2, 128, dict(base_channels=128, channel_mult=(1, 2, 4, 8), num_res_blocks=2,
                             attention_resolutions=(16, 8), lowres_channels=3),
            dict(spatial_factor=4, spatial_upsample="bilinear")),
}


def get_config(variant: str = "base") -> ml_collections.ConfigDict:
  if variant not in STAGES:
    raise ValueError(f"configs/cascade_pod.py has variants {sorted(STAGES)}, not {variant!r}")
  frames, stride, resolution, model, cascade = STAGES[variant]
  c = base_config()
  c.data.update(name="ucf101", train_split="train", eval_split="test", num_frames=frames,
                frame_stride=stride, resolution=resolution, random_flip=True)
  c.model.update(in_channels=3, out_channels=3, image_size=resolution, head_dim=64, emb_dim=1024,
                 dropout=0.1, num_classes=101, prediction="v", dtype="bfloat16", remat="block",
                 attention_impl="auto",
                 **model)
  c.cascade.update(aug_level_min=0.0, aug_level_max=0.5, sample_aug_level=0.1, **cascade)
  c.diffusion.update(prediction="v", weighting="v")
  c.optim.update(learning_rate=1e-4, b2=0.99, warmup_steps=5000, ema_decay=0.9999)
  c.train.update(global_batch_size=256, num_steps=500_000, class_dropout=0.1, log_every=100,
                 sample_every=10_000, checkpoint_every=2500)
  c.mesh.update(data=-1, fsdp=8, tensor=1)
  c.sample.update(num_samples=16, sampler="ddim", num_steps=128, guidance_weight=1.0)
  return c
