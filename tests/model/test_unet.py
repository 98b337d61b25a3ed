"""Properties of the space-time U-Net: shapes, frame independence, conditioning, dtypes, compiles."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm_jax.model import ModelConfig, UNet, count_params

B, T, S = 2, 4, 16
TINY = ModelConfig(base_channels=16, channel_mult=(1, 2), attention_resolutions=(8,), image_size=S,
                  head_dim=8, emb_dim=32, norm_groups=8)


def make_model(config: ModelConfig, seed: int = 0, scale: float = 0.1) -> UNet:
  """A model with every parameter random (zero-init layers would hide bugs).

  Built from shapes (nnx.eval_shape) and filled with numpy noise: real initialisation compiles one
  XLA program per parameter shape, which costs tens of seconds on 2 cores.
  """
  graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if path[-1] == "key":
      return jax.random.key(seed + len(path))
    if path[-1] == "count":
      return jnp.zeros(x.shape, x.dtype)
    return jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype)
  state = nnx.State.from_flat_path({p: v.replace(fill(p, v)) for p, v in nnx.to_flat_state(state)})
  return nnx.merge(graphdef, state)


def inputs(seed: int = 0, t: int = T, s: int = S, c: int = 3):
  kz, kn = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kz, (B, t, s, s, c)), jax.random.uniform(kn, (B,))


# Tests check values, not speed: a lower XLA optimisation level halves compile time on 2 cores.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.partial(jax.jit, static_argnames=("graphdef", "deterministic"),
                   compiler_options=FAST_COMPILE)
def _forward(graphdef, state, z, noise, labels, cond_frames, cond_mask, image_mask, deterministic):
  model = nnx.merge(graphdef, state)
  out = model(z, noise, labels=labels, cond_frames=cond_frames, cond_mask=cond_mask,
              image_mask=image_mask, deterministic=deterministic)
  return out, nnx.state(model)


def forward(model, z, noise, labels=None, cond_frames=None, cond_mask=None, image_mask=None,
            deterministic=True):
  graphdef, state = nnx.split(model)
  out, state = _forward(graphdef, state, z, noise, labels, cond_frames, cond_mask, image_mask,
                        deterministic)
  nnx.update(model, state)  # dropout rng counters advance
  return out


@pytest.mark.parametrize("overrides", [
    {},
    {"relative_position": "rotary", "temporal_attention": "all_levels"},
    {"relative_position": "none", "temporal_attention": "none", "conv_impl": "im2col"},
    {"temporal_downsample": (0,), "attention_chunk_size": 32},
])
def test_shapes_and_dtype(overrides):
  cfg = dataclasses.replace(TINY, out_channels=5, **overrides)
  z, noise = inputs()
  out = forward(make_model(cfg), z, noise)
  assert out.shape == (B, T, S, S, 5) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3


def test_real_init_counts_and_zero_output():
  """One real initialisation: count_params equals the materialised count; zero-init output layer."""
  cfg = dataclasses.replace(TINY, num_classes=5, cond_channels=2)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0))))
  state = jax.jit(lambda: nnx.state(UNet(cfg, rngs=nnx.Rngs(0))), compiler_options=FAST_COMPILE)()
  model = nnx.merge(graphdef, state)
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert count_params(cfg) == actual
  z, noise = inputs()
  labels = jnp.array([0, 5], jnp.int32)
  out = forward(model, z, noise, labels=labels, cond_frames=jnp.ones((B, T, S, S, 2)),
                cond_mask=jnp.ones((B, T)))
  np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_count_params_grows_as_expected():
  base = count_params(TINY)
  assert count_params(dataclasses.replace(TINY, num_classes=5)) == base + 6 * 32
  wider = count_params(dataclasses.replace(TINY, base_channels=32, head_dim=16))
  assert 3.5 * base < wider < 4.2 * base  # conv/attention weights scale with channels^2


def _perturb_frame(z, j):
  return z.at[:, j].add(1.0)


@pytest.mark.parametrize("temporal_attention", ["attention_levels", "all_levels"])
def test_image_mode_frames_are_independent(temporal_attention):
  cfg = dataclasses.replace(TINY, temporal_attention=temporal_attention)
  model = make_model(cfg)
  z, noise = inputs()
  image_mask = jnp.ones((B, T), bool)
  base = forward(model, z, noise, image_mask=image_mask)
  moved = forward(model, _perturb_frame(z, 1), noise, image_mask=image_mask)
  diff = jnp.abs(moved - base).max(axis=(0, 2, 3, 4))  # [T]
  assert float(diff[1]) > 1e-3
  np.testing.assert_array_equal(np.asarray(diff[jnp.array([0, 2, 3])]), 0.0)


def test_video_mode_frames_are_coupled():
  model = make_model(TINY)
  z, noise = inputs()
  base = forward(model, z, noise)
  moved = forward(model, _perturb_frame(z, 1), noise)
  diff = jnp.abs(moved - base).max(axis=(0, 2, 3, 4))
  assert bool(jnp.all(diff > 1e-4)), diff


def test_mixed_mask_images_isolated_video_coupled():
  """Frames 0-1 video, 2-3 images: an image frame changes nothing else; a video frame its peer."""
  model = make_model(TINY)
  z, noise = inputs()
  mask = jnp.array([[False, False, True, True]] * B)
  base = forward(model, z, noise, image_mask=mask)
  d_img = jnp.abs(forward(model, _perturb_frame(z, 2), noise, image_mask=mask) - base).max(axis=(0, 2, 3, 4))
  d_vid = jnp.abs(forward(model, _perturb_frame(z, 0), noise, image_mask=mask) - base).max(axis=(0, 2, 3, 4))
  np.testing.assert_array_equal(np.asarray(d_img[jnp.array([0, 1, 3])]), 0.0)
  assert float(d_vid[1]) > 1e-4
  np.testing.assert_array_equal(np.asarray(d_vid[2:]), 0.0)


def test_null_class_is_a_learned_embedding():
  """labels == num_classes reads the last (null) row of the class table and no other row."""
  cfg = dataclasses.replace(TINY, num_classes=3)
  model = make_model(cfg)
  z, noise = inputs()
  null = jnp.full((B,), 3, jnp.int32)
  out_null = forward(model, z, noise, labels=null)
  out_0 = forward(model, z, noise, labels=jnp.zeros((B,), jnp.int32))
  assert float(jnp.abs(out_null - out_0).max()) > 1e-4
  table = model.embed.label_emb[...]  # [num_classes + 1, E]
  model.embed.label_emb[...] = table.at[:3].add(1.0)
  np.testing.assert_array_equal(np.asarray(forward(model, z, noise, labels=null)), np.asarray(out_null))
  model.embed.label_emb[...] = table.at[3].add(1.0)
  assert float(jnp.abs(forward(model, z, noise, labels=null) - out_null).max()) > 1e-4


def test_conditioning_frames_respect_mask():
  cfg = dataclasses.replace(TINY, cond_channels=3, temporal_attention="none")
  model = make_model(cfg)
  z, noise = inputs()
  cond = jax.random.normal(jax.random.key(5), z.shape)
  mask = jnp.array([[1.0, 0.0, 0.0, 0.0]] * B)
  base = forward(model, z, noise, cond_frames=cond, cond_mask=mask)
  hidden = forward(model, z, noise, cond_frames=cond.at[:, 1].add(3.0), cond_mask=mask)
  shown = forward(model, z, noise, cond_frames=cond.at[:, 0].add(3.0), cond_mask=mask)
  np.testing.assert_array_equal(np.asarray(hidden), np.asarray(base))  # masked frame ignored
  assert float(jnp.abs(shown[:, 0] - base[:, 0]).max()) > 1e-4


def test_dropout_only_when_not_deterministic():
  model = make_model(dataclasses.replace(TINY, dropout=0.5))
  z, noise = inputs()
  a = forward(model, z, noise)
  b = forward(model, z, noise)
  c = forward(model, z, noise, deterministic=False)
  d = forward(model, z, noise, deterministic=False)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(jnp.abs(c - a).max()) > 1e-4 and float(jnp.abs(c - d).max()) > 1e-4


def test_bf16_compute_close_to_f32():
  model32 = make_model(TINY)
  model16 = make_model(dataclasses.replace(TINY, dtype="bfloat16"))
  z, noise = inputs()
  out32, out16 = forward(model32, z, noise), forward(model16, z, noise)
  assert out16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert 0.0 < rel < 0.05, rel


def test_remat_equals_plain_forward_and_grad():
  """A rematerialised stage (res block + both attentions) gives the same values and gradients."""
  from vdm_jax.model.unet import Stage

  def stage(cfg):
    abstract = nnx.eval_shape(lambda: Stage(8, 8, 0, cfg, rngs=nnx.Rngs(0), force_attention=True))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(0)
    flat = {p: v.replace(jax.random.key(0) if p[-1] == "key" else jnp.asarray(
        0.1 * rng.standard_normal(v.shape), v.dtype)) for p, v in nnx.to_flat_state(state)}
    return nnx.merge(graphdef, nnx.State.from_flat_path(flat))
  small = dataclasses.replace(TINY, base_channels=8, emb_dim=16)
  plain, remat = stage(small), stage(dataclasses.replace(small, remat="block"))
  x = jax.random.normal(jax.random.key(1), (1, T, 8, 8, 8))
  emb = jax.random.normal(jax.random.key(2), (1, 16))
  def loss(params, x, rest, graphdef):
    return jnp.mean(nnx.merge(graphdef, params, rest)(x, emb) ** 2)
  grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=3,
                    compiler_options=FAST_COMPILE)

  def run(m):
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    return grad_fn(params, x, rest, graphdef)
  (l1, g1), (l2, g2) = run(plain), run(remat)
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_one_compilation_per_input_shape():
  model = make_model(TINY)
  traces = []

  graphdef, state = nnx.split(model)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def f(state, z, noise):
    traces.append(z.shape)
    return nnx.merge(graphdef, state)(z, noise)
  f(state, *inputs(0))
  f(state, *inputs(1))
  assert len(traces) == 1
  f(state, *inputs(2, t=2))
  assert len(traces) == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"base_channels": 12}, "head_dim"),
    ({"relative_position": "alibi"}, "relative_position"),
    ({"temporal_downsample": (1,)}, "temporal_downsample"),
])
def test_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TINY, **kwargs)


def test_input_errors():
  model = make_model(dataclasses.replace(TINY, num_classes=3, temporal_downsample=(0,)))
  z, noise = inputs()
  with pytest.raises(ValueError, match="labels"):
    model(z, noise)
  labels = jnp.zeros((B,), jnp.int32)
  with pytest.raises(ValueError, match="image_size"):
    model(inputs(s=8)[0], noise, labels=labels)
  with pytest.raises(ValueError, match="divide by 2"):
    model(inputs(t=3)[0], noise, labels=labels)
  with pytest.raises(ValueError, match="temporal_downsample"):
    model(z, noise, labels=labels, image_mask=jnp.ones((B, T), bool))


def test_config_from_lists():
  cfg = ModelConfig(**{"channel_mult": [1, 2], "attention_resolutions": [8], "image_size": 16,
                      "base_channels": 16, "head_dim": 8})
  assert cfg.channel_mult == (1, 2) and hash(cfg)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_impls_agree_in_value_and_input_gradient(stride):
  # Sampling swaps lax.conv for im2col under reconstruction guidance (the same kernels): both
  # must compute the same conv and the same gradient w.r.t. the input.
  from vdm_jax.model.layers import Conv2D
  lax_conv = Conv2D(5, 7, rngs=nnx.Rngs(0), stride=stride, conv_impl="lax")
  im2col = Conv2D(5, 7, rngs=nnx.Rngs(0), stride=stride, conv_impl="im2col")
  im2col.kernel[...] = lax_conv.kernel[...]
  im2col.bias[...] = jnp.linspace(-1, 1, 7)
  lax_conv.bias[...] = jnp.linspace(-1, 1, 7)
  x = jax.random.normal(jax.random.key(1), (3, 9, 9, 5))
  w = jax.random.normal(jax.random.key(2), lax_conv(x).shape)
  loss = lambda conv, x: jnp.sum(conv(x) * w)
  np.testing.assert_allclose(im2col(x), lax_conv(x), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(jax.grad(loss, argnums=1)(im2col, x),
                             jax.grad(loss, argnums=1)(lax_conv, x), atol=1e-5, rtol=1e-5)


def test_unet_is_the_same_function_under_either_conv_impl():
  a = make_model(TINY)
  graphdef_b, _ = nnx.split(nnx.eval_shape(
      lambda: UNet(dataclasses.replace(TINY, conv_impl="im2col"), rngs=nnx.Rngs(0))))
  b = nnx.merge(graphdef_b, nnx.state(a))  # the same parameter tree, the other implementation
  z, t = inputs()
  np.testing.assert_allclose(b(z, t), a(z, t), atol=1e-4, rtol=1e-4)
