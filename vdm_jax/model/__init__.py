"""The space-time factorised U-Net (VDM): config, module, presets, building it on a mesh."""

from vdm_jax.model.build import abstract_model, count_params, create_model, split_params
from vdm_jax.model.config import UNetConfig, small_config, vdm_bair_config, vdm_ucf101_config
from vdm_jax.model.unet import UNet

__all__ = ["UNet", "UNetConfig", "abstract_model", "count_params", "create_model", "small_config",
           "split_params", "vdm_bair_config", "vdm_ucf101_config"]
