"""Cascade stages (vdm_jax/superres.py and the SR conditioning path): the degradation and its
upsampling, noise-conditioning augmentation (the conditioning only, drawn per example in training,
fixed at sampling), the U-Net's lowres / aug_level inputs, guidance keeping them, and the stage-chain
checks that run before anything compiles. Small arrays, one micro U-Net: a few seconds."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm_jax import superres
from vdm_jax.config import ExperimentConfig, TrainConfig
from vdm_jax.denoiser import Conditioning, make_denoise_fn, null_cond
from vdm_jax.generation import CascadeStage, check_chain
from vdm_jax.generation.cascade import aug_levels_for
from vdm_jax.generation.lowres import stage_input
from vdm_jax.generation.plan import GenerateOptions, plan
from vdm_jax.model import ModelConfig
from vdm_jax.model.inputs import input_channels
from vdm_jax.model.unet import UNet
from vdm_jax.superres import CascadeConfig
from vdm_jax.train.step import training_condition
from vdm_jax.train.workdir import check_workdir_compatible

METHODS = [(s, t) for s in superres.SPATIAL_UPSAMPLE for t in superres.TEMPORAL_UPSAMPLE]


def video(shape=(2, 4, 4, 4, 3), seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, -1.0, 1.0)


def test_downsample_keeps_every_kth_frame_and_averages_areas():
  x = video((1, 6, 4, 4, 1))
  small = superres.downsample(x, 2, 3)
  assert small.shape == (1, 2, 2, 2, 1)
  np.testing.assert_allclose(small[0, 1, 1, 0, 0], x[0, 3, 2:4, 0:2, 0].mean(), rtol=1e-6)
  np.testing.assert_allclose(superres.downsample(x, 1, 2), x[:, ::2])
  with pytest.raises(ValueError, match="does not divide"):
    superres.downsample(x, 3, 1)


@pytest.mark.parametrize("spatial,temporal", METHODS)
def test_upsampling_shapes_and_a_constant_video_stays_constant(spatial, temporal):
  x = jnp.full((2, 3, 4, 4, 3), 0.3)
  up = superres.upsample(x, 2, 3, spatial, temporal)
  assert up.shape == (2, 9, 8, 8, 3)
  np.testing.assert_allclose(up, 0.3, rtol=1e-6)


@pytest.mark.parametrize("temporal", superres.TEMPORAL_UPSAMPLE)
def test_downsample_undoes_nearest_upsampling_exactly(temporal):
  x = video()
  np.testing.assert_allclose(superres.downsample(superres.upsample(x, 2, 2, "nearest", temporal), 2, 2),
                             x, atol=1e-6)


def test_temporal_linear_interpolates_between_kept_frames_and_holds_the_last():
  x = jnp.arange(3.0)[None, :, None, None, None] * jnp.ones((1, 3, 2, 2, 1))
  up = superres.upsample(x, 1, 2, "nearest", "linear")
  np.testing.assert_allclose(up[0, :, 0, 0, 0], [0, 0.5, 1, 1.5, 2, 2])
  np.testing.assert_allclose(superres.upsample(x, 1, 2, "nearest", "repeat")[0, :, 0, 0, 0],
                             [0, 0, 1, 1, 2, 2])


def test_augmentation_is_the_cosine_forward_process():
  x, eps = video(seed=1), video(seed=2)
  np.testing.assert_allclose(superres.augment(x, jnp.zeros(2), eps), x)
  np.testing.assert_allclose(superres.augment(x, jnp.ones(2), eps), eps, atol=1e-6)
  half = superres.augment(x, jnp.array([0.5, 0.0]), eps)
  np.testing.assert_allclose(half[0], np.sqrt(0.5) * (x[0] + eps[0]), atol=1e-6)
  np.testing.assert_allclose(half[1], x[1])


SR_MODEL = ModelConfig(base_channels=8, channel_mult=(1,), attention_resolutions=(), head_dim=8,
                      image_size=4, norm_groups=4, emb_mlp_layers=1, lowres_channels=3)
TSR = CascadeConfig(temporal_factor=2, aug_level_min=0.2, aug_level_max=0.4)


def test_training_augments_only_the_conditioning_at_levels_drawn_per_example():
  batch = {"video": video((8, 4, 4, 4, 3))}
  before = np.asarray(batch["video"])
  cond, frame_mask = training_condition(batch, jax.random.key(0), SR_MODEL, TrainConfig(), TSR)
  np.testing.assert_array_equal(batch["video"], before)  # the clip to denoise is untouched
  assert frame_mask is None and cond.labels is None and cond.cond_frames is None
  levels = np.asarray(cond.aug_level)
  assert levels.shape == (8,) and np.all((levels >= 0.2) & (levels <= 0.4))
  assert len(np.unique(levels)) == 8
  clean = superres.lowres_of(batch["video"], TSR)
  phi = levels[:, None, None, None, None] * np.pi / 2
  eps = (np.asarray(cond.lowres) - np.cos(phi) * clean) / np.sin(phi)
  assert 0.7 < eps.std() < 1.3 and abs(eps.mean()) < 0.2  # what is added is N(0, 1) scaled
  exact = CascadeConfig(temporal_factor=2, aug_level_min=0.0, aug_level_max=0.0)
  cond0, _ = training_condition(batch, jax.random.key(0), SR_MODEL, TrainConfig(), exact)
  np.testing.assert_allclose(cond0.lowres, clean, atol=1e-6)
  with pytest.raises(ValueError, match="needs a cascade section"):
    training_condition(batch, jax.random.key(0), SR_MODEL, TrainConfig(), None)


def sr_experiment(**cascade) -> ExperimentConfig:
  c = importlib.import_module("configs.cascade_tsr").get_config("tiny")
  c.cascade.update(**cascade)
  return ExperimentConfig.from_config_dict(c)


def test_sampling_noises_the_given_conditioning_at_one_fixed_level():
  exp = sr_experiment(sample_aug_level=0.0)
  opts = GenerateOptions(num_samples=2)
  p = plan(exp, opts, 1)
  lowres = np.asarray(video((2, 8, 16, 16, 3)))
  clean = stage_input(exp, opts, p, lowres, None)
  np.testing.assert_array_equal(clean.lowres, lowres)  # level 0: no noise, nothing drawn at random
  noised = stage_input(exp, opts, p, lowres, 0.3)
  assert noised.aug_level == 0.3 and noised.source == "previous stage"
  assert not np.allclose(noised.lowres, lowres)
  np.testing.assert_array_equal(noised.lowres, stage_input(exp, opts, p, lowres, 0.3).lowres)
  with pytest.raises(ValueError, match=r"the low-resolution video is \(2, 4, 16, 16, 3\) but"):
    stage_input(exp, opts, p, lowres[:, :4], 0.3)
  base = ExperimentConfig.from_config_dict(importlib.import_module("configs.default").get_config("tiny"))
  with pytest.raises(ValueError, match="not a cascade super-resolution stage"):
    stage_input(base, opts, plan(base, opts, 1), lowres, None)


def test_the_unet_takes_lowres_and_aug_level_and_guidance_keeps_them():
  graphdef, params, rest = nnx.split(UNet(SR_MODEL, rngs=nnx.Rngs(0)), nnx.Param, ...)
  # Zero-initialised output convs would hide every input but z: perturb all parameters.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  denoise = jax.jit(lambda params, z, cond: make_denoise_fn(graphdef, params, rest)(z, jnp.zeros(2), cond))
  z, lowres = video(), video(seed=4)
  out = denoise(params, z, Conditioning(lowres=lowres, aug_level=jnp.zeros(2)))
  assert out.shape == z.shape
  assert not np.allclose(out, denoise(params, z, Conditioning(lowres=-lowres, aug_level=jnp.zeros(2))))
  assert not np.allclose(out, denoise(params, z, Conditioning(lowres=lowres, aug_level=jnp.ones(2))))
  with pytest.raises(ValueError, match=r"lowres_channels=3: pass lowres \(2, 4, 4, 4, 3\)"):
    denoise(params, z, Conditioning())
  with pytest.raises(ValueError, match="lowres must be"):
    denoise(params, z, Conditioning(lowres=lowres[:, :2], aug_level=jnp.zeros(2)))
  cond = Conditioning(labels=jnp.array([1, 2]), lowres=lowres, aug_level=jnp.zeros(2))
  null = null_cond(cond, num_classes=5)
  np.testing.assert_array_equal(null.labels, [5, 5])
  assert null.lowres is lowres and null.aug_level is cond.aug_level


def test_a_model_without_lowres_channels_refuses_them():
  plain = dataclasses.replace(SR_MODEL, lowres_channels=0)
  model = nnx.eval_shape(lambda: UNet(plain, rngs=nnx.Rngs(0)))
  z = jax.ShapeDtypeStruct((2, 4, 4, 4, 3), jnp.float32)
  with pytest.raises(ValueError, match="lowres / aug_level given but lowres_channels=0"):
    jax.eval_shape(lambda z: model(z, jnp.zeros(2), lowres=z, aug_level=jnp.zeros(2)), z)
  assert input_channels(SR_MODEL) == input_channels(plain) + 3


def stage(name: str, variant: str = "", **data) -> CascadeStage:
  c = importlib.import_module(f"configs.{name}").get_config(variant)
  c.data.update(**data)
  return CascadeStage(f"runs/{name}", ExperimentConfig.from_config_dict(c), 0)


def test_the_cpu_cascade_configs_chain_and_mismatches_are_one_line_errors():
  base, tsr, ssr = stage("default", frame_stride=2), stage("cascade_tsr"), stage("cascade_ssr")
  check_chain([base, tsr, ssr])
  assert base.exp.data.frame_stride == tsr.exp.data.frame_stride * tsr.exp.cascade.temporal_factor
  cases = [([base, ssr], r"stage 0 \(runs/default\) gives \[T, H, W, C\]=\[8, 16, 16, 3\] but stage 1 "
                         r"\(runs/cascade_ssr\) takes \[16, 16, 16, 3\]"),
           ([tsr, ssr], "the first cascade stage runs/cascade_tsr is a super-resolution stage"),
           ([base, base], r"cascade stage 1 \(runs/default\) is not a super-resolution stage"),
           ([base, tsr, tsr], r"stage 2 \(runs/cascade_tsr\) takes \[8, 16, 16, 3\]"),
           ([], "at least one stage")]
  for stages, message in cases:
    with pytest.raises(ValueError, match=message) as err:
      check_chain(stages)
    assert "\n" not in str(err.value)
  assert aug_levels_for([base, tsr, ssr], None) == [None, 0.1, 0.1]
  assert aug_levels_for([base, tsr, ssr], [0.2]) == [None, 0.2, 0.2]
  assert aug_levels_for([base, tsr, ssr], [0.2, 0.0]) == [None, 0.2, 0.0]
  with pytest.raises(ValueError, match="1 augmentation level or one per"):
    aug_levels_for([base, tsr, ssr], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match=r"in \[0, 1\]"):
    aug_levels_for([base, tsr], [1.5])


def test_a_workdir_from_before_the_cascade_fields_stays_compatible():
  """A checkpoint whose manifest has no model.lowres_channels (older runs) resumes as 0."""
  exp = ExperimentConfig.from_config_dict(importlib.import_module("configs.default").get_config("tiny"))
  saved = exp.to_dict()
  del saved["model"]["lowres_channels"]
  check_workdir_compatible({"config": saved}, exp, "runs/old")
  sr = dataclasses.replace(exp, model=dataclasses.replace(exp.model, lowres_channels=3))
  with pytest.raises(ValueError, match="model.lowres_channels: checkpoint 0 vs config 3"):
    check_workdir_compatible({"config": saved}, sr, "runs/old")
