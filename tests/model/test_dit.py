"""Properties of the video DiT: shapes for each attention and position kind, input errors, image
frames that really do not mix, adaLN-Zero's zero start, remat/bf16, one sharded forward equal to one
device, and a real train.py run with --config.model.backbone=dit sampled on another device count."""

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from vdm_jax import data, generation
from vdm_jax.model import DiT, ModelConfig, count_params
from vdm_jax.parallel import host_to_global, make_mesh, state_shardings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B, T, S = 2, 4, 8
TINY = ModelConfig(backbone="dit", hidden_size=32, head_dim=8, depth=1, mlp_ratio=2.0, image_size=S,
                   max_frames=T)
# Tests check values, not speed: a lower XLA optimisation level halves compile time on 2 cores.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def random_state(config: ModelConfig, seed: int = 0, scale: float = 0.2, cls=DiT):
  """(graphdef, state) of cls (default the DiT) with every parameter random: zero-initialised
  layers (adaLN-Zero, output projections) would hide everything.

  Built from shapes and filled with numpy noise (no init program to compile)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if path[-1] == "key":
      return jax.random.key(seed)
    if path[-1] == "count":
      return jnp.zeros(x.shape, x.dtype)
    return jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype)
  return graphdef, nnx.State.from_flat_path({p: v.replace(fill(p, v)) for p, v in nnx.to_flat_state(state)})


def _apply(graphdef, state, z, noise, labels=None, cond_frames=None, cond_mask=None, image_mask=None):
  return nnx.merge(graphdef, state)(z, noise, labels=labels, cond_frames=cond_frames,
                                    cond_mask=cond_mask, image_mask=image_mask)


_forward = jax.jit(_apply, static_argnames=("graphdef",), compiler_options=FAST_COMPILE)


def inputs(seed: int = 0, b: int = B):
  kz, kn = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kz, (b, T, S, S, 3)), jax.random.uniform(kn, (b,))


@pytest.mark.parametrize("overrides", [
    dict(dit_attention="factorised", position="rope"),
    dict(dit_attention="factorised", position="learned", temporal_patch_size=2),
    dict(dit_attention="full", position="rope", num_classes=3, cond_channels=3),
    dict(dit_attention="full", position="learned", patch_size=4, out_channels=5),
])
def test_shapes_and_dtype(overrides):
  cfg = dataclasses.replace(TINY, **overrides)
  z, noise = inputs()
  kw = {}
  if cfg.num_classes:
    kw = dict(labels=jnp.array([0, 3]), cond_frames=z, cond_mask=jnp.ones((B, T)))
  out = _forward(*random_state(cfg), z, noise, **kw)
  assert out.shape == (B, T, S, S, cfg.out_channels) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3


INPUT_ERRORS = {
    "channels": (dict(z=jnp.zeros((B, T, S, S, 4))), r"z must be \[B, T, H, W, 3\]"),
    "patch": (dict(z=jnp.zeros((B, T, S + 1, S + 1, 3))), r"does not divide into 2x2 patches; change "
              r"model\.patch_size"),
    "labels": (dict(labels=jnp.zeros((B,), jnp.int32)), "labels given but num_classes=0"),
    "noise": (dict(noise=jnp.zeros((B + 1,))), r"noise_level must be \[B\]"),
    "cond": (dict(cond_frames=jnp.zeros((B, T, S, S, 3))), "cond_frames given but cond_channels=0"),
}


@pytest.mark.parametrize("name", INPUT_ERRORS)
def test_check_inputs_errors(name):
  """Each bad argument raises in one line before anything is computed (an abstract model)."""
  model = nnx.eval_shape(lambda: DiT(TINY, rngs=nnx.Rngs(0)))
  args, match = INPUT_ERRORS[name]
  z, noise = inputs()
  args = dict(dict(z=z, noise=noise), **args)
  with pytest.raises(ValueError, match=match):
    model(args.pop("z"), args.pop("noise"), **args)


def test_config_errors_say_what_to_change():
  with pytest.raises(ValueError, match=r"tubelets of temporal_patch_size=2; change model\.temporal_patch"):
    dataclasses.replace(TINY, temporal_patch_size=2).validate(5, S, S)
  with pytest.raises(ValueError, match="cannot be kept independent .* set model.temporal_patch_size=1"):
    dataclasses.replace(TINY, temporal_patch_size=2).validate(T, S, S, image_frames=2)
  with pytest.raises(ValueError, match=r"learned positions cover 4 frames .* raise model\.max_frames"):
    dataclasses.replace(TINY, position="learned").validate(8, S, S)
  dataclasses.replace(TINY, position="rope").validate(8, 2 * S, 4 * S)  # rotary: any size
  with pytest.raises(ValueError, match="even head dimension >= 6"):
    dataclasses.replace(TINY, head_dim=4)
  with pytest.raises(ValueError, match="dit_attention='axial' is unknown"):
    dataclasses.replace(TINY, dit_attention="axial")
  # U-Net-only fields are not checked for the DiT (and DiT-only ones not for the U-Net).
  dataclasses.replace(TINY, channel_mult=(), norm_groups=0, base_channels=0)
  ModelConfig(hidden_size=0, depth=0)
  model = nnx.eval_shape(lambda: DiT(dataclasses.replace(TINY, temporal_patch_size=2), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="image_mask marks image frames"):
    model(*inputs(), image_mask=jnp.array([[False, False, True, True]] * B))


@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_image_frames_do_not_mix(attention):
  """d out[frame i] / d z[frame j]: zero for i != j when i or j is an image frame, nonzero between
  video frames (frames 0-1 video, 2-3 images)."""
  graphdef, state = random_state(dataclasses.replace(TINY, dit_attention=attention, depth=2))
  z, noise = inputs()
  mask = jnp.array([[False, False, True, True]] * B)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def frame_grads(z):  # [T(out frame i), T(in frame j)]: |d sum(out[:, i]) / d z[:, j]| summed
    def out_frame(z, i):
      return jnp.take(_apply(graphdef, state, z, noise, image_mask=mask), i, axis=1).sum()
    grads = jax.vmap(lambda i: jax.grad(out_frame)(z, i))(jnp.arange(T))  # [T, B, T, S, S, C]
    return jnp.abs(grads).sum(axis=(1, 3, 4, 5))
  g = np.asarray(frame_grads(z))
  off = ~np.eye(T, dtype=bool)
  assert (np.diag(g) > 1e-4).all(), g
  assert g[0, 1] > 1e-4 and g[1, 0] > 1e-4, g  # video frames mix
  image_pairs = off & (np.arange(T)[:, None] >= 2) | off & (np.arange(T)[None, :] >= 2)
  np.testing.assert_array_equal(g[image_pairs], 0.0)


def test_adaln_zero_starts_at_zero_output_and_identity_blocks():
  """A real initialisation: count_params equals the materialised count; every block is the identity
  and the output exactly zero (adaLN-Zero). (create_model's sharded build: the train.py test.)"""
  cfg = dataclasses.replace(TINY, num_classes=5, cond_channels=3, position="learned")
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))
  state = jax.jit(lambda: nnx.state(DiT(cfg, rngs=nnx.Rngs(0))), compiler_options=FAST_COMPILE)()
  assert count_params(cfg) == sum(x.size for x in jax.tree.leaves(nnx.state(state, nnx.Param)))
  z, noise = inputs()
  out = _forward(graphdef, state, z, noise, labels=jnp.array([0, 5]), cond_frames=z,
                 cond_mask=jnp.ones((B, T)))
  np.testing.assert_array_equal(np.asarray(out), 0.0)
  model = nnx.merge(graphdef, state)
  assert isinstance(model, DiT)
  x = jax.random.normal(jax.random.key(1), (B, 2, 4, 4, cfg.hidden_size))
  np.testing.assert_array_equal(np.asarray(model.blocks[0](x, jnp.ones((B, cfg.embedding_dim)), None)),
                                np.asarray(x))


def test_remat_equals_plain_and_bfloat16_is_close():
  """remat='block' changes memory, not values (forward and gradient); bf16 compute stays close."""
  z, noise = inputs()

  @functools.partial(jax.jit, static_argnames=("graphdef",), compiler_options=FAST_COMPILE)
  def loss_and_grad(graphdef, state, z):
    params, rest = nnx.split_state(state, nnx.Param, ...)
    loss = lambda p: jnp.mean(_apply(graphdef, nnx.merge_state(p, rest), z, noise) ** 2)  # noqa: E731
    return jax.value_and_grad(loss)(params)
  graphdef, state = random_state(TINY)
  ref, ref_grad = loss_and_grad(graphdef, state, z)
  remat, _ = random_state(dataclasses.replace(TINY, remat="block"))
  got, got_grad = loss_and_grad(remat, state, z)
  np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
  assert len(jax.tree.leaves(ref_grad)) > 10
  for a, b in zip(jax.tree.leaves(ref_grad), jax.tree.leaves(got_grad)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  bf16, _ = random_state(dataclasses.replace(TINY, dtype="bfloat16"))
  out32, out16 = _forward(graphdef, state, z, noise), _forward(bf16, state, z, noise)
  assert out16.dtype == jnp.float32
  assert float(jnp.abs(out16 - out32).max()) < 0.05 * float(jnp.abs(out32).max())


def test_sharded_forward_equals_single_device(devices):
  """data=2 x fsdp=2 x tensor=2: heads and MLP over tensor, parameters over fsdp, same output."""
  cfg = dataclasses.replace(TINY, num_classes=3, dit_attention="full")
  mesh = make_mesh(2, 2, 2)
  graphdef, state = random_state(cfg)
  z, noise = inputs(b=4)
  labels = jnp.array([0, 1, 2, 3])
  mask = jnp.array([[False, False, True, True]] * 4)
  expected = _forward(graphdef, state, z, noise, labels, image_mask=mask)
  shardings = state_shardings(state, mesh)
  flat = dict(nnx.to_flat_state(shardings))
  assert flat[("blocks", 0, "attention", 0, "qkv", "kernel")].get_value().spec == P("fsdp", "tensor")
  assert flat[("blocks", 0, "mlp", "fc2", "kernel")].get_value().spec == P("tensor", "fsdp")
  glob = host_to_global({"z": np.asarray(z), "noise": np.asarray(noise), "labels": np.asarray(labels),
                         "mask": np.asarray(mask)}, mesh)
  with jax.set_mesh(mesh):
    out = _forward(graphdef, jax.device_put(state, shardings), glob["z"], glob["noise"],
                   glob["labels"], image_mask=glob["mask"])
  assert len(out.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=2e-4, atol=2e-5)


DIT_FLAGS = ["--config.model.backbone=dit", "--config.model.hidden_size=16", "--config.model.depth=1",
             "--config.model.head_dim=8", "--config.model.mlp_ratio=2.0"]


@pytest.mark.slow
def test_train_script_trains_a_dit_and_generation_samples_it_on_another_device_count(tmp_path):
  """train.py with --config.model.backbone=dit on 2 devices, then the sampler restores the checkpoint
  onto this process' 8 devices (the path sample.py and evaluation take), unchanged."""
  from tests.train.conftest import MICRO_DATA, micro_flags
  data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
  data.dataset_info(data.DataConfig(name="moving_shapes", data_dir=data_dir, **MICRO_DATA))
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", VDM_DATA_DIR=data_dir,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  command = [sys.executable, os.path.join(ROOT, "train.py"), "--config=configs/default.py:tiny",
             f"--workdir={workdir}", *micro_flags(), *DIT_FLAGS, "--config.train.num_steps=2",
             "--config.train.checkpoint_every=2", "--config.train.sample_every=0"]
  proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  videos, protocol = generation.generate_from_workdir(workdir, num_samples=2, num_steps=2)
  assert videos.shape == (2, MICRO_DATA["num_frames"], MICRO_DATA["resolution"],
                          MICRO_DATA["resolution"], 3)
  assert np.isfinite(videos).all() and protocol["checkpoint_step"] == 2


def test_a_dit_can_be_a_cascade_stage():
  """lowres channels and the augmentation level reach the output (the shared inputs.py path)."""
  cfg = dataclasses.replace(TINY, lowres_channels=3)
  graphdef, state = random_state(cfg)
  model = nnx.merge(graphdef, state)
  z, noise = inputs()
  lowres = jax.random.normal(jax.random.key(5), z.shape)
  level = jnp.full((B,), 0.2)
  out = np.asarray(model(z, noise, lowres=lowres, aug_level=level))
  assert out.shape == z.shape
  assert np.abs(out - np.asarray(model(z, noise, lowres=lowres * 0.5, aug_level=level))).max() > 1e-4
  assert np.abs(out - np.asarray(model(z, noise, lowres=lowres, aug_level=level + 0.5))).max() > 1e-4
  with pytest.raises(ValueError, match="lowres"):
    model(z, noise)
