"""The pure train step: it overfits one batch, compiles once, and gives the same numbers on 1 device,
8 data-parallel devices and a (data 2 x fsdp 4) mesh."""

import functools

import jax
import numpy as np
import pytest

from tests.train.conftest import MICRO_DATA, MICRO_MODEL
from vdm_jax import data
from vdm_jax.config import ExperimentConfig
from vdm_jax.parallel import batch_sharding, host_to_global, make_mesh
from vdm_jax.train.optimizer import learning_rate_schedule, make_optimizer
from vdm_jax.train.state import create_train_state, state_shardings
from vdm_jax.train.step import make_train_step

NUM_STEPS = 100


@pytest.fixture(scope="module")
def exp(train_data_dir):
  return ExperimentConfig.from_config_dict({
      "model": MICRO_MODEL, "data": dict(MICRO_DATA, data_dir=train_data_dir),
      "optim": dict(learning_rate=3e-3, warmup_steps=0, ema_decay=0.9),
      "diffusion": dict(time_sampling="low_discrepancy")})


@pytest.fixture(scope="module")
def host_batches(exp):
  it = data.create_train_iterator(exp.data, 8, seed=0)
  batches = [next(it) for _ in range(3)]
  it.close()
  return batches


class CompiledStep:
  """A train state on `mesh` and the step jitted as loop.py does, counting its traces."""

  def __init__(self, exp, mesh):
    self.mesh = mesh
    tx = make_optimizer(exp.optim, NUM_STEPS)
    lr = learning_rate_schedule(exp.optim, NUM_STEPS)
    graphdef, rest, self.state = create_train_state(exp.model, tx, mesh, seed=0)
    step_fn = make_train_step(graphdef, rest, tx, lr, model_cfg=exp.model,
                              diffusion_cfg=exp.diffusion,
                              schedule=exp.diffusion.schedule(exp.data.resolution),
                              optim_cfg=exp.optim, train_cfg=exp.train)
    self.traces = 0

    def counted(state, batch):
      self.traces += 1
      return step_fn(state, batch)

    shardings = state_shardings(self.state)
    batch_sh = {k: batch_sharding(mesh) for k in ("video", "label", "image_mask")}
    self.fn = jax.jit(counted, in_shardings=(shardings, batch_sh),
                      out_shardings=(shardings, None), donate_argnums=0)

  def run(self, host_batches, *, fixed_rng=False):
    """Steps over host_batches; returns the losses (host floats) and leaves the final state."""
    rng0 = np.asarray(self.state["rng"])  # a host copy: the device array is donated
    metrics = []
    for host_batch in host_batches:
      if fixed_rng:  # the same noise and times every step: one deterministic regression
        self.state = dict(self.state, rng=jax.device_put(rng0, self.state["rng"].sharding))
      self.state, m = self.fn(self.state, host_to_global(host_batch, self.mesh))
      metrics.append(m)
    metrics = jax.device_get(metrics)
    assert all(bool(m["finite"]) for m in metrics)
    return np.array([m["loss"] for m in metrics])


def host_copy(tree):
  """Owned numpy copies (on CPU np.asarray may alias a buffer that a donating step then reuses)."""
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


@pytest.fixture(scope="module")
def data_parallel(exp, devices):
  return CompiledStep(exp, make_mesh(data=8, devices=devices))


@pytest.fixture(scope="module")
def reference_run(data_parallel, host_batches):
  """Three steps on 8 data-parallel devices: (losses, host copy of the final state)."""
  losses = data_parallel.run(host_batches)
  return losses, host_copy(data_parallel.state)


def test_one_compilation_for_many_steps(data_parallel, reference_run, host_batches):
  data_parallel.run(host_batches[:2])  # more steps on new data after the first three
  assert data_parallel.traces == 1
  assert data_parallel.fn._cache_size() == 1
  assert int(data_parallel.state["step"]) == 5


def test_overfits_one_batch(exp, devices, host_batches):
  step = CompiledStep(exp, make_mesh(data=8, devices=devices))
  losses = step.run([host_batches[0]] * NUM_STEPS, fixed_rng=True)
  assert step.traces == 1
  assert losses[0] / losses[-1] > 5.0, losses[::10]
  assert np.all(np.diff(losses[:10]) < 0), losses[:10]


@pytest.mark.parametrize("mesh_axes", [dict(data=1), dict(data=2, fsdp=4)], ids=["1dev", "fsdp"])
def test_same_trajectory_on_other_meshes(exp, devices, host_batches, reference_run, mesh_axes):
  reference_losses, reference_state = reference_run
  mesh_devices = devices[:1] if mesh_axes == dict(data=1) else devices
  step = CompiledStep(exp, make_mesh(**mesh_axes, devices=mesh_devices))
  losses = step.run(host_batches)
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-4)
  state = host_copy(step.state)
  far = []
  for name in ("params", "ema", "opt_state"):
    jax.tree_util.tree_map_with_path(
        lambda p, a, b, name=name: None if np.allclose(a, b, rtol=1e-4, atol=1e-6) else far.append(
            (name + jax.tree_util.keystr(p), float(np.abs(a - b).max()), float(np.abs(b).max()))),
        state[name], reference_state[name])
  assert not far, far
  np.testing.assert_array_equal(state["rng"], reference_state["rng"])


@pytest.mark.parametrize("backbone,remat",
                         [("unet", "none"), ("unet", "block"), ("dit", "none"), ("dit", "block")])
def test_dropout_under_jit_and_grad_draws_from_the_step_key(backbone, remat):
  # model.dropout > 0 (the ucf101 config's 0.1): the train step merges the model inside jit and
  # grad, where the dropout stream's counters mutate (this once raised NNX's TraceContextError),
  # and each step's key must reach the Dropout layers (once they kept the init seed's key, so
  # every step drew the same masks).
  from vdm_jax.denoiser import make_denoise_fn
  from vdm_jax.model import create_model, split_params
  from vdm_jax.model.config import ModelConfig
  cfg = ModelConfig(**MICRO_MODEL, dropout=0.5, remat=remat, backbone=backbone, hidden_size=16, depth=1)
  graphdef, state = create_model(cfg, make_mesh(), 0)
  params, rest = split_params(state)
  leaves, treedef = jax.tree.flatten(params)  # random nonzero output layers: dropout shows
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = treedef.unflatten([x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  z = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 3))

  @functools.partial(jax.jit, static_argnums=2)
  def loss_and_grad(params, key, deterministic):
    def loss(params):
      fn = make_denoise_fn(graphdef, params, rest, deterministic=deterministic, dropout_rng=key)
      return fn(z, jax.numpy.zeros((2,)), None).sum()
    return jax.value_and_grad(loss)(params)

  run = lambda seed, det=False: float(loss_and_grad(params, jax.random.key(seed), det)[0])
  assert run(0) == run(0)
  assert run(0) != run(1)
  assert run(0, True) == run(1, True) != run(0)
