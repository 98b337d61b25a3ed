"""Every config in configs/ and its tiny variant: parses into the typed sections, fits its own data
shapes, and builds a U-Net of the parameter count the README states (counted from shapes only,
nnx.eval_shape: nothing is allocated, so the 1.17B-parameter UCF-101 model is counted on a laptop)."""

import dataclasses
import importlib

import pytest

from vdm_jax.config import ExperimentConfig
from vdm_jax.model import count_params, vdm_bair_config, vdm_ucf101_config

# Exact counts; the README's config table rounds them.
PARAMS = {
    "default": 334_435,
    "moving_mnist": 30_559_169,
    "bair": 137_318_979,
    "ucf101": 1_165_696_003,
}
CONFIGS = ("default", "moving_mnist", "bair", "ucf101")


def experiment(name: str, variant: str = "") -> ExperimentConfig:
  return ExperimentConfig.from_config_dict(importlib.import_module(f"configs.{name}").get_config(variant))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("variant", ["", "tiny"])
def test_config_fits_its_data_and_prediction_agrees(name, variant):
  exp = experiment(name, variant)
  frames = exp.data.num_frames + exp.data.image_frames
  exp.model.validate(frames, exp.data.resolution, exp.data.resolution)
  assert exp.model.prediction == exp.diffusion.prediction
  if variant == "tiny":
    assert (exp.data.num_frames, exp.data.resolution) == (8, 16)
    assert count_params(exp.model) < 250_000
    assert exp.train.num_steps <= 10 and exp.train.checkpoint_every < exp.train.num_steps


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_counts(name):
  assert count_params(experiment(name).model) == PARAMS[name]


def test_ucf101_and_bair_configs_are_the_published_architectures():
  """configs/ucf101.py and configs/bair.py build exactly VDM's U-Nets (model/config.py)."""
  fields = ("base_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "head_dim",
            "emb_dim", "image_size", "num_classes", "cond_channels", "prediction")
  for name, published in (("ucf101", vdm_ucf101_config()), ("bair", vdm_bair_config())):
    model = experiment(name).model
    assert {f: getattr(model, f) for f in fields} == {f: getattr(published, f) for f in fields}, name
    assert count_params(model) == count_params(dataclasses.replace(published, conv_impl=model.conv_impl))
  ucf = experiment("ucf101")
  assert (ucf.model.dropout, ucf.optim.learning_rate, ucf.optim.b2, ucf.train.global_batch_size,
          ucf.optim.ema_decay) == (0.1, 3e-4, 0.99, 128, 0.9999)
  bair = experiment("bair")
  assert (bair.train.cond_frames, bair.data.num_frames, bair.diffusion.prediction,
          bair.optim.weight_decay) == (1, 16, "v", 0.01)


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="variants"):
    experiment("default", "huge")
