"""Image-first training: an image model's parameters start a video model, temporal layers only train."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.train.conftest import micro_config, read_checkpoint
from vdm_jax.config import ConfigError, OptimConfig
from vdm_jax.model import ModelConfig, UNet, split_params
from vdm_jax.train import inflate, loop
from vdm_jax.train.optimizer import make_optimizer, trainable_mask

SMALL = dict(base_channels=8, channel_mult=(1, 2), attention_resolutions=(4,), head_dim=8,
             image_size=8, norm_groups=4, emb_mlp_layers=1)


def _params(**model):
  params, _ = split_params(nnx.state(UNet(ModelConfig(**SMALL, **model), rngs=nnx.Rngs(1))))
  return params


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_frozen_parameters_do_not_move(optimizer):
  params = {"spatial": {"kernel": jnp.ones((3,))}, "temporal": {"kernel": jnp.ones((3,))}}
  tx = make_optimizer(OptimConfig(optimizer=optimizer, weight_decay=0.1, warmup_steps=0,
                                  learning_rate=0.1, trainable="temporal"), 10)
  state = tx.init(params)
  grads = {"spatial": {"kernel": jnp.full((3,), 5.0)}, "temporal": {"kernel": jnp.full((3,), 5.0)}}
  updates, state = tx.update(grads, state, params)
  assert np.all(np.asarray(updates["spatial"]["kernel"]) == 0)
  assert np.all(np.asarray(updates["temporal"]["kernel"]) < 0)
  everything = make_optimizer(OptimConfig(trainable="all", warmup_steps=0), 10)
  moved, _ = everything.update(grads, everything.init(params), params)
  assert np.all(np.asarray(moved["spatial"]["kernel"]) != 0)


def test_a_model_without_temporal_layers_cannot_train_only_them():
  image = _params(temporal_attention="none")
  assert not any(jax.tree.leaves(trainable_mask(image, "temporal")))
  with pytest.raises(ConfigError, match="no parameters under 'temporal'"):
    inflate.check_trainable(image, "temporal")
  inflate.check_trainable(_params(), "temporal")


def test_inflated_video_model_starts_as_the_image_model():
  """The image model's parameters in a video model: temporal layers are the identity at first."""
  image_cfg = ModelConfig(**SMALL, temporal_attention="none")
  video_cfg = ModelConfig(**SMALL, temporal_attention="all_levels")
  image = UNet(image_cfg, rngs=nnx.Rngs(1))
  video = UNet(video_cfg, rngs=nnx.Rngs(2))
  params, rest = split_params(nnx.state(video))
  merged, copied = inflate.copy_shared(nnx.state(image, nnx.Param), params)
  assert 0 < copied < len(jax.tree.leaves(params))
  nnx.update(video, merged)
  z = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 3))
  level = jnp.array([0.3, 0.7])
  np.testing.assert_allclose(np.asarray(video(z, level)), np.asarray(image(z, level)), atol=1e-5)
  with pytest.raises(ConfigError, match="another shape"):
    inflate.copy_shared(nnx.state(UNet(ModelConfig(**{**SMALL, "base_channels": 16},
                                                   temporal_attention="none"),
                                       rngs=nnx.Rngs(0)), nnx.Param), params)


def test_image_first_run_trains_only_the_temporal_layers(tmp_path, train_data_dir):
  image_dir, video_dir = str(tmp_path / "image"), str(tmp_path / "video")
  loop.train_and_evaluate(micro_config(train_data_dir, model={"temporal_attention": "none"},
                                       train={"num_steps": 2}), image_dir)
  loop.train_and_evaluate(micro_config(train_data_dir, train={"num_steps": 2, "init_from": image_dir},
                                       optim={"trainable": "temporal"}), video_dir)
  image, _ = read_checkpoint(image_dir, 2)
  video, _ = read_checkpoint(video_dir, 2)
  flat_image = inflate._flat(image["ema"])
  flat_video = inflate._flat(video["params"])
  assert flat_image and set(flat_image) < set(flat_video)
  for key, value in flat_image.items():  # frozen: still the image model's EMA
    np.testing.assert_array_equal(flat_video[key], value, err_msg=key)
  moved = [k for k in flat_video if k not in flat_image and "out']['kernel" in k]
  assert moved and all(np.abs(flat_video[k]).max() > 0 for k in moved)  # zero-init, then trained
