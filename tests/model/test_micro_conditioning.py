"""Micro-conditioning (Stable Video Diffusion): the clip's fps / motion embedded like the noise level.

The value changes the output of both backbones (and only a model with the field takes it), a model
without the field keeps its parameter tree, the config and argument errors, and the denoiser feeding
`Conditioning.motion` to the model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.model.test_dit import FAST_COMPILE, random_state
from vdm_jax.denoiser import Conditioning, make_denoise_fn
from vdm_jax.model import DiT, ModelConfig, UNet, split_params

B, T, S = 2, 4, 8
UNET = dict(base_channels=8, channel_mult=(1,), attention_resolutions=(), image_size=S, head_dim=8,
            norm_groups=4, temporal_attention="none")
DIT = dict(backbone="dit", hidden_size=16, head_dim=8, depth=1, mlp_ratio=1.0, image_size=S, max_frames=T)


def random_model(cls, config: ModelConfig, seed: int = 0):
  """The model with every parameter random (zero-initialised output layers would hide the input)."""
  return nnx.merge(*random_state(config, seed, cls=cls))


def _inputs():
  kz, kn = jax.random.split(jax.random.key(0))
  return jax.random.normal(kz, (B, T, S, S, 3)), jax.random.uniform(kn, (B,))


@pytest.mark.parametrize("cls,kw", [(UNet, UNET), (DiT, DIT)], ids=["unet", "dit"])
def test_the_motion_value_changes_the_output_of_both_backbones(cls, kw):
  """Through the denoiser (Conditioning.fps / motion -> the model's micro input -> the embedding)."""
  graphdef, state = nnx.split(random_model(cls, ModelConfig(micro_conditioning=("fps", "motion"), **kw)))
  params, rest = split_params(state)
  z, _ = _inputs()

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def forward(params, z, fps, motion):
    denoise = make_denoise_fn(graphdef, params, rest)
    return denoise(z, jnp.zeros((len(z),)), Conditioning(fps=fps, motion=motion))

  # One forward: four rows of the same noisy clip and level, differing only in (fps, motion).
  fps, motion = jnp.asarray([8.0, 8.0, 24.0, 8.0]), jnp.asarray([6.0, 24.0, 6.0, 6.0])
  slow, fast, other_fps, again = np.asarray(forward(params, jnp.repeat(z[:1], 4, 0), fps, motion))
  assert np.abs(slow - fast).max() > 1e-3 and np.abs(slow - other_fps).max() > 1e-3
  np.testing.assert_allclose(slow, again, atol=1e-6)
  with pytest.raises(ValueError, match="Conditioning has no \\['motion'\\]"):
    make_denoise_fn(graphdef, params, rest)(z, jnp.zeros((B,)), Conditioning(fps=jnp.full((B,), 8.0)))


@pytest.mark.parametrize("cls,kw", [(UNet, UNET), (DiT, DIT)], ids=["unet", "dit"])
def test_without_the_field_the_parameter_tree_is_unchanged_and_micro_refused(cls, kw):
  paths = lambda cfg: {p for p, _ in nnx.to_flat_state(nnx.state(
      nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))), nnx.Param))}
  plain, micro = paths(ModelConfig(**kw)), paths(ModelConfig(micro_conditioning=("motion",), **kw))
  assert plain < micro and all("micro_mlps" in p for p in micro - plain)
  assert not any("micro" in str(p) for p in plain)
  model = random_model(cls, ModelConfig(**kw))
  z, noise = _inputs()
  with pytest.raises(ValueError, match="micro_conditioning=\\(\\); set it"):
    model(z, noise, micro=jnp.ones((B, 1)))
  with_field = random_model(cls, ModelConfig(micro_conditioning=("motion",), **kw))
  with pytest.raises(ValueError, match="pass micro \\[B, 1\\]"):
    with_field(z, noise)
  with pytest.raises(ValueError, match="pass micro"):
    with_field(z, noise, micro=jnp.ones((B, 2)))


@pytest.mark.parametrize("value,message", [
    (("speed",), "must name distinct features"), (("motion", "motion"), "must name distinct features"),
    ("motion", "must be a tuple of names")])
def test_config_errors(value, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(micro_conditioning=value)
  assert ModelConfig(micro_conditioning=["fps", "motion"]).micro_conditioning == ("fps", "motion")
