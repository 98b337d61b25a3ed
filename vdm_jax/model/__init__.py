"""The backbones (the space-time factorised U-Net of VDM, a video DiT on space-time patches): config,
modules, presets, building them on a mesh."""

from vdm_jax.model.build import abstract_model, count_params, create_model, split_params
from vdm_jax.model.config import ModelConfig, UNetConfig, small_config, vdm_bair_config, vdm_ucf101_config
from vdm_jax.model.dit import DiT
from vdm_jax.model.unet import UNet

__all__ = ["DiT", "ModelConfig", "UNet", "UNetConfig", "abstract_model", "count_params", "create_model",
           "small_config", "split_params", "vdm_bair_config", "vdm_ucf101_config"]
