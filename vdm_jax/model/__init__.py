"""The space-time factorised U-Net (VDM): config, module, presets, parameter counting."""

import jax
from flax import nnx

from vdm_jax.model.config import UNetConfig, small_config, vdm_bair_config, vdm_ucf101_config
from vdm_jax.model.unet import UNet


def count_params(config: UNetConfig) -> int:
  """Number of parameters of UNet(config), from shapes only (nnx.eval_shape, nothing allocated)."""
  abstract = nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  return int(sum(x.size for x in jax.tree.leaves(state)))


__all__ = ["UNet", "UNetConfig", "count_params", "small_config", "vdm_bair_config",
           "vdm_ucf101_config"]
