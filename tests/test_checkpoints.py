"""Tests for vdm_jax.checkpoints: round trips, resharding restores, guards, killed saves."""

import importlib.util
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from vdm_jax.checkpoints import Checkpointer, abstract_like, library_versions

HERE = os.path.dirname(os.path.abspath(__file__))


def _mesh(shape, names, devices):
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices)


def _state(seed=0):
  """A small train-state-like dict with float32, bfloat16, int32 and uint32 key data."""
  k = jax.random.split(jax.random.key(seed), 3)
  params = {"dense": {"kernel": jax.random.normal(k[0], (16, 8)),
                      "bias": jnp.arange(8, dtype=jnp.float32)},
            "emb": jax.random.normal(k[1], (4, 8)).astype(jnp.bfloat16)}
  tx = optax.adam(1e-3)
  return {"params": params,
          "ema_params": jax.tree.map(lambda x: x * 2, params),
          "opt_state": tx.init(params),
          "step": jnp.asarray(7, jnp.int32),
          "rng": jax.random.key_data(k[2])}


def _assert_bit_identical(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x).reshape(-1).view(np.uint8),
                                  np.asarray(y).reshape(-1).view(np.uint8))


def test_round_trip_bit_identical(tmp_path):
  state = _state()
  data_state = {"epoch": 2, "position": 123, "seed": [1, 2]}
  manifest = {"config": {"model": {"channels": 64}}, "versions": {"jax": jax.__version__}}
  with Checkpointer(str(tmp_path / "ckpt")) as ckpt:
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    ckpt.save(7, state, data_state=data_state, manifest=manifest)
    ckpt.wait_until_finished()
  with Checkpointer(str(tmp_path / "ckpt")) as ckpt:
    restored, data_back, manifest_back = ckpt.restore(target=abstract_like(state))
  _assert_bit_identical(state, restored)
  assert restored["rng"].dtype == jnp.uint32 and restored["params"]["emb"].dtype == jnp.bfloat16
  assert data_back == data_state and manifest_back == manifest


def test_nnx_state_round_trip(tmp_path):
  model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
  state = nnx.state(model)
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, state)
    restored, data_back, manifest_back = ckpt.restore(target=abstract_like(state))
  assert isinstance(restored, nnx.State)
  _assert_bit_identical(state, restored)
  assert data_back == {} and manifest_back == {}


def _sharded_state(devices):
  """Params sharded over an (8,) mesh and over a (4, 2) mesh, plus replicated leaves."""
  m8 = _mesh((8,), ("x",), devices)
  m42 = _mesh((4, 2), ("a", "b"), devices)
  state = _state(1)
  w = jnp.arange(64 * 16, dtype=jnp.float32).reshape(64, 16) / 7
  state["params"]["w8"] = jax.device_put(w, NamedSharding(m8, P("x", None)))
  state["params"]["w42"] = jax.device_put(w.astype(jnp.bfloat16), NamedSharding(m42, P("a", "b")))
  state["params"]["dense"]["kernel"] = jax.device_put(
      state["params"]["dense"]["kernel"], NamedSharding(m42, P(None, "a")))
  return state


def test_restore_onto_other_meshes(tmp_path, devices):
  state = _sharded_state(devices)
  assert len(state["params"]["w8"].sharding.device_set) == 8
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(3, state)
  host = jax.device_get(state)

  one = SingleDeviceSharding(devices[0])
  m4 = _mesh((4,), ("y",), devices[4:])
  rows = NamedSharding(m4, P("y"))
  replicated = NamedSharding(m4, P())

  def four_device_sharding(x):
    return rows if x.ndim >= 1 and x.shape[0] % 4 == 0 else replicated

  for shardings in (one, jax.tree.map(four_device_sharding, host)):
    target = abstract_like(host, shardings)
    with Checkpointer(str(tmp_path), create=False) as ckpt:
      restored, _, _ = ckpt.restore(3, target=target)
    _assert_bit_identical(host, restored)
    for x, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
      assert x.sharding == t.sharding, (x.sharding, t.sharding)
  assert restored["params"]["w8"].sharding == rows
  assert restored["params"]["w8"].addressable_shards[0].data.shape == (16, 16)


def test_max_to_keep_latest_and_manifest(tmp_path):
  state = _state()
  with Checkpointer(str(tmp_path), max_to_keep=2) as ckpt:
    for step in (10, 20, 30):
      ckpt.save(step, state, manifest={"step": step})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [20, 30]
    assert ckpt.latest_step() == 30
  assert sorted(os.listdir(tmp_path)) == ["20", "30"]
  reader = Checkpointer(str(tmp_path), create=False)
  assert reader.read_manifest() == {"step": 30}
  assert reader.read_manifest(20) == {"step": 20}
  with pytest.raises(FileNotFoundError, match="step 10"):
    reader.read_manifest(10)
  reader.close()


def test_library_versions_go_into_a_manifest(tmp_path):
  versions = library_versions()
  assert versions["jax"] == jax.__version__ and versions["orbax-checkpoint"] == "0.12.8"
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(0, {"x": jnp.zeros(3)}, manifest={"versions": versions})
    assert ckpt.read_manifest(0)["versions"] == versions


def test_same_step_is_noop_and_older_step_refused(tmp_path):
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(5, _state(0), manifest={"v": 0})
    ckpt.save(5, _state(1), manifest={"v": 1})  # no-op: step 5 exists
    assert ckpt.read_manifest(5) == {"v": 0}
    with pytest.raises(ValueError, match="newer step 5"):
      ckpt.save(4, _state(0))
    assert ckpt.all_steps() == [5]


def test_non_finite_guard(tmp_path):
  state = _state()
  state["params"]["emb"] = state["params"]["emb"].at[1, 2].set(jnp.nan)
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(FloatingPointError, match=r"step 4: leaf 'params/emb'"):
      ckpt.save(4, state)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == []
    ckpt.save(4, state, check_finite=False)  # the caller may opt out
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [4]
  assert os.listdir(tmp_path) == ["4"]


def test_non_finite_guard_writes_nothing(tmp_path):
  state = _state()
  state["ema_params"]["dense"]["bias"] = state["ema_params"]["dense"]["bias"].at[0].set(jnp.inf)
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(FloatingPointError, match="ema_params/dense/bias"):
      ckpt.save(9, state)
  assert os.listdir(tmp_path) == []


def test_no_checkpoint_message(tmp_path):
  target = abstract_like(_state())
  with Checkpointer(str(tmp_path / "empty")) as ckpt:
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty: train first"):
      ckpt.restore(target=target)
  with Checkpointer(str(tmp_path / "missing"), create=False) as ckpt:
    with pytest.raises(FileNotFoundError, match="pass --workdir of a training run"):
      ckpt.read_manifest()


def test_mismatched_target_names_leaf(tmp_path):
  state = _state()
  with Checkpointer(str(tmp_path), async_save=False) as ckpt:
    ckpt.save(1, state)
    wrong_shape = jax.device_get(state)
    wrong_shape["params"]["dense"]["kernel"] = np.zeros((16, 9), np.float32)
    with pytest.raises(ValueError, match=r"params/dense/kernel' is \(16, 9\).*holds \(16, 8\)"):
      ckpt.restore(target=abstract_like(wrong_shape, SingleDeviceSharding(jax.devices()[0])))
    wrong_dtype = abstract_like(state)
    wrong_dtype["step"] = jax.ShapeDtypeStruct((), jnp.float32, sharding=state["step"].sharding)
    with pytest.raises(ValueError, match="'step' is .* float32 but .* int32"):
      ckpt.restore(target=wrong_dtype)
    missing = abstract_like(state)
    del missing["ema_params"]
    with pytest.raises(ValueError, match="holds leaf 'ema_params/"):
      ckpt.restore(target=missing)
    extra = abstract_like(state)
    extra["params"]["new"] = extra["step"]
    with pytest.raises(ValueError, match="'params/new' is not in checkpoint step 1"):
      ckpt.restore(target=extra)
    no_sharding = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    with pytest.raises(ValueError, match="has no sharding"):
      ckpt.restore(target=no_sharding)


def test_bad_inputs_rejected(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(TypeError, match="typed PRNG key"):
      ckpt.save(1, {"rng": jax.random.key(0)})
    with pytest.raises(TypeError, match="manifest must be JSON-serializable"):
      ckpt.save(1, {"x": jnp.zeros(2)}, manifest={"bad": object()})
    assert ckpt.all_steps() == []


def test_latest_step_skips_save_in_flight(tmp_path):
  make_state = _load_child_module().make_state
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, make_state(1))
    ckpt.wait_until_finished()
    ckpt.save(2, make_state(2))  # ~36 MB: its background write takes well over 10 ms
    latest_during, steps_during = ckpt.latest_step(), ckpt.all_steps()
    still_writing = "2" not in os.listdir(tmp_path)  # checked after: the rename is one-way
    assert still_writing, "the async save finished too fast for this test"
    assert latest_during == 1 and steps_during == [1]
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]


def _load_child_module():
  spec = importlib.util.spec_from_file_location("_ckpt_kill_child",
                                                os.path.join(HERE, "_ckpt_kill_child.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_killed_async_save_is_ignored(tmp_path):
  """A process SIGKILLed during an async save of step 2 leaves step 1 as the latest."""
  directory = str(tmp_path / "ckpt")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, os.path.join(HERE, "_ckpt_kill_child.py"), directory],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert "killing during save of step 2" in proc.stdout, proc.stdout + proc.stderr[-3000:]
  leftovers = os.listdir(directory)
  assert "1" in leftovers and "2" not in leftovers, leftovers
  assert any(name.startswith("2.orbax-checkpoint-tmp") for name in leftovers), leftovers

  make_state = _load_child_module().make_state  # the same states as the child
  with Checkpointer(directory) as ckpt:
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    expected = make_state(1)
    restored, data_state, manifest = ckpt.restore(target=abstract_like(expected))
    _assert_bit_identical(expected, restored)
    assert data_state == {"position": 1} and manifest == {"step": 1}
    ckpt.save(2, make_state(2))  # resuming writes step 2 again, over the leftover
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2]
  assert sorted(os.listdir(directory)) == ["1", "2"]
