"""Moving MNIST (TFDS `moving_mnist`: 10,000 sequences of 20 frames, 64x64, one channel).

    python train.py --config configs/moving_mnist.py --workdir runs/mnist

Needs the data prepared once on a machine with network: `tfds build moving_mnist
--file_format=array_record --data_dir=DIR`, then --config.data.data_dir=DIR (or VDM_DATA_DIR=DIR).
TFDS has only a `test` split: 90% trains, 10% evaluates. Unconditional, v-prediction, 16x64x64 clips;
sized for one GPU/TPU host (30.6M parameters). `:tiny` runs the same pipeline on a CPU in minutes.
"""

import ml_collections

from vdm_jax.config import base_config, shrink_to_tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base_config()
  c.data.update(name="moving_mnist", train_split="test[:90%]", eval_split="test[90%:]",
                num_frames=16, resolution=64)
  c.model.update(in_channels=1, out_channels=1, base_channels=64, channel_mult=(1, 2, 4, 4),
                 num_res_blocks=2, attention_resolutions=(16, 8), image_size=64, head_dim=64)
  c.diffusion.update(prediction="v", weighting="v")
  c.optim.update(learning_rate=2e-4, b2=0.99, warmup_steps=1000, ema_decay=0.9999)
  c.train.update(global_batch_size=64, num_steps=200_000, log_every=100, sample_every=5000,
                 checkpoint_every=2500)
  c.sample.update(num_samples=16, num_steps=128)
  if variant == "tiny":
    shrink_to_tiny(c)
  elif variant:
    raise ValueError(f"configs/moving_mnist.py has variants '' and 'tiny', not {variant!r}")
  return c
