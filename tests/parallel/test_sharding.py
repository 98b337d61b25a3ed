"""Mesh creation, logical-axis shardings, sharded creation and a sharded forward pass."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from vdm_jax.model import ModelConfig, UNet, create_model
from vdm_jax.parallel import batch_sharding, host_to_global, logical_to_spec, make_mesh, state_shardings

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
CFG = ModelConfig(base_channels=16, channel_mult=(1, 2), attention_resolutions=(8,), image_size=16,
                 head_dim=8, emb_dim=32, norm_groups=8, num_classes=3)


def test_make_mesh_fills_one_axis(devices):
  mesh = make_mesh(data=-1, fsdp=4)
  assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape) == {
      "data": 2, "fsdp": 4, "tensor": 1}
  assert make_mesh(2, 2, 2).shape["tensor"] == 2
  with pytest.raises(ValueError, match="8 devices"):
    make_mesh(3, 2, 1)
  with pytest.raises(ValueError, match="-1"):
    make_mesh(-1, -1)


def test_logical_to_spec_replicates_what_does_not_divide():
  shape = {"data": 2, "fsdp": 4, "tensor": 1}
  assert logical_to_spec(("embed", "mlp"), (64, 32), shape) == P("fsdp", "tensor")
  assert logical_to_spec(("embed", "mlp"), (6, 32), shape) == P(None, "tensor")
  assert logical_to_spec(("batch", "time"), (8, 4), shape) == P(("data", "fsdp"), None)
  assert logical_to_spec(("batch",), (2,), shape) == P(None)


def test_create_model_matches_unsharded(devices):
  mesh = make_mesh(2, 4)
  cfg = dataclasses.replace(CFG, channel_mult=(1,), attention_resolutions=(16,), num_classes=0)
  graphdef, state = create_model(cfg, mesh, 0)
  flat = dict(nnx.to_flat_state(state))
  kernel = flat[("down", 0, "res", "conv1", "kernel")][...]  # [3, 3, 16, 16]
  assert kernel.sharding.spec == P(None, None, "fsdp", "tensor")
  assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (3, 3, 4, 16)
  # Same values as an ordinary (single-device) initialisation with the same seed.
  ref = jax.jit(lambda: nnx.state(UNet(cfg, rngs=nnx.Rngs(0)), nnx.Param),
                compiler_options=FAST_COMPILE)()
  got = nnx.state(nnx.merge(graphdef, state), nnx.Param)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
def _forward(graphdef, state, z, noise, labels):
  return nnx.merge(graphdef, state)(z, noise, labels=labels)


def test_sharded_forward_equals_single_device(devices):
  mesh = make_mesh(2, 4)
  rng = np.random.default_rng(0)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(CFG, rngs=nnx.Rngs(0))))
  flat = {p: v.replace(jax.random.key(0) if p[-1] == "key" else jnp.asarray(
      0.1 * rng.standard_normal(v.shape), v.dtype)) for p, v in nnx.to_flat_state(state)}
  state = nnx.State.from_flat_path(flat)
  batch = {"z": rng.standard_normal((8, 4, 16, 16, 3)).astype(np.float32),
           "noise": rng.uniform(size=(8,)).astype(np.float32),
           "labels": np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)}
  expected = _forward(graphdef, state, *(jnp.asarray(batch[k]) for k in ("z", "noise", "labels")))

  sharded_state = jax.device_put(state, state_shardings(state, mesh))
  glob = host_to_global(batch, mesh)
  assert glob["z"].sharding.spec == P(("data", "fsdp"))
  with jax.set_mesh(mesh):
    out = _forward(graphdef, sharded_state, glob["z"], glob["noise"], glob["labels"])
  assert len(out.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=2e-4, atol=2e-5)


def test_host_to_global_rejects_rows_that_do_not_divide(devices):
  mesh = make_mesh(2, 4)
  with pytest.raises(ValueError, match="do not divide"):
    host_to_global({"z": np.zeros((6, 2), np.float32)}, mesh)
  assert batch_sharding(mesh).spec == P(("data", "fsdp"))
