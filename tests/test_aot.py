"""scripts/aot_compile.py: the train step compiled ahead of time from an abstract state, its report.

On the 8 forced CPU devices always; for a TPU topology (compile-only devices) when libtpu is installed.
"""

import importlib.util

import jax
import pytest

from scripts import aot_compile
from tests.train.conftest import MICRO_DATA, MICRO_MODEL
from vdm_jax.config import ExperimentConfig
from vdm_jax.model import count_params

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
HAS_CUDA_PLUGIN = aot_compile.has_cuda_plugin()


def micro_experiment(**mesh):
  return ExperimentConfig.from_config_dict({
      "model": MICRO_MODEL, "data": MICRO_DATA, "mesh": mesh or {"data": 4, "fsdp": 2},
      "train": {"global_batch_size": 8}})


def _check_sane(row, exp, num_devices):
  assert row["devices"] == num_devices and row["params"] == count_params(exp.model)
  assert row["params_bytes"] == 4 * row["params"]  # float32 master weights
  # params, EMA and two Adam moments, fsdp-sharded: less than all four whole, more than a 1/fsdp share.
  fsdp = row["mesh"]["fsdp"]
  assert 4 * row["params_bytes"] / fsdp <= row["state_bytes_per_device"] < 4 * row["params_bytes"]
  assert row["argument_bytes"] >= row["state_bytes_per_device"]  # state + batch shard + rng streams
  assert row["alias_bytes"] >= 0.99 * row["state_bytes_per_device"]  # the donated state is reused
  assert row["total_bytes"] > row["params_bytes"] / num_devices
  assert row["temp_gib"] > 0 and row["flops_per_device"] > 0 and row["gb_accessed_per_device"] > 0
  assert row["flops_total"] == pytest.approx(row["flops_per_device"] * num_devices)
  assert row["matmul_flops_total"] > 0
  assert row["compile_s"] >= 0 and row["lower_s"] >= 0


def test_abstract_train_state_matches_the_created_one(devices):
  """Same tree, shapes, dtypes and shardings as create_train_state's, without allocating it."""
  from vdm_jax.parallel import make_mesh
  from vdm_jax.train.optimizer import make_optimizer
  from vdm_jax.train.state import abstract_train_state, create_train_state
  exp = micro_experiment()
  mesh, tx = make_mesh(4, 2, 1), make_optimizer(exp.optim, 10)
  _, rest, abstract = abstract_train_state(exp.model, tx, mesh)
  _, concrete_rest, state = create_train_state(exp.model, tx, mesh, seed=0)
  describe = lambda x: (x.shape, x.dtype, x.sharding.spec)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  assert jax.tree.leaves(jax.tree.map(describe, abstract)) == jax.tree.leaves(jax.tree.map(describe, state))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(rest)] == [
      (x.shape, x.dtype) for x in jax.tree.leaves(concrete_rest)]


def test_cpu_mesh_report_is_sane(devices):
  exp = micro_experiment()
  row = aot_compile.compile_report(exp, devices)
  _check_sane(row, exp, 8)
  assert row["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
  assert row["hbm_gib"] is None and row["fits"] is None  # a CPU has no HBM figure
  line = aot_compile.markdown_row("micro", row)
  assert line.startswith("| micro | cpu (8 x cpu) | 4x2x1 | 8 |") and line.count("|") == 14


def test_topology_names_and_errors():
  assert aot_compile.tpu_topology_name("v5p-8") == "v5p:2x2x1"
  assert aot_compile.tpu_topology_name("v4-32") == "v4:2x2x4"
  assert aot_compile.tpu_topology_name("v5e-256") == "v5e:16x16"
  assert aot_compile.tpu_topology_name("v6e:2x4") == "v6e:2x4"
  with pytest.raises(ValueError, match="sizes"):
    aot_compile.tpu_topology_name("v5e-12")
  with pytest.raises(ValueError, match="generation"):
    aot_compile.tpu_topology_name("tpu9-8")


def test_batch_that_does_not_divide_is_refused_before_compiling(devices):
  exp = ExperimentConfig.from_config_dict({"model": MICRO_MODEL, "data": MICRO_DATA,
                                           "train": {"global_batch_size": 12}})
  with pytest.raises(ValueError, match="global_batch_size=12"):
    aot_compile.compile_report(exp, devices)


def test_missing_libtpu_says_how_to_install(monkeypatch):
  from jax.experimental import topologies

  def no_tpu(**kwargs):
    raise RuntimeError("JAX TPU support not installed; cannot generate TPU topology.")

  monkeypatch.setattr(topologies, "get_topology_desc", no_tpu)
  with pytest.raises(aot_compile.LibtpuMissing, match=r"pip install \"libtpu==0.0.42"):
    aot_compile.topology_devices("v5e-4")
  monkeypatch.setattr(aot_compile, "has_cuda_plugin", lambda: False)
  with pytest.raises(aot_compile.LibtpuMissing, match="jax-cuda12-pjrt==0.10.2"):
    aot_compile.topology_devices("h100-8")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (optional: "
                    + aot_compile.LIBTPU_PIP + ")")
def test_tpu_topology_compile_on_this_machine():
  """A v5e 2x2 slice compiled here: its devices are compile-only, nothing runs on them."""
  devices = aot_compile.topology_devices("v5e-4")
  assert len(devices) == 4 and devices[0].device_kind == "TPU v5 lite"
  exp = micro_experiment(data=2, fsdp=2)
  row = aot_compile.compile_report(exp, devices, "v5e-4")
  _check_sane(row, exp, 4)
  assert row["hbm_gib"] == 16 and row["fits"] is True
  assert jax.default_backend() == "cpu"  # the TPU was only a compile target


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (optional: "
                    + aot_compile.LIBTPU_PIP + ")")
def test_mesh_that_does_not_fit_the_chip_grid_says_what_to_change():
  # v5e-64 is an 8x8 grid: a data axis of 16 cannot be laid on it (jax's own error names logical
  # axis indices); the error names the mesh, the grid and a fix, before any compile.
  devices = aot_compile.topology_devices("v5e-64")
  with pytest.raises(ValueError, match=r"16 x 4 x 1 does not map .* grid 8x8x1.*fsdp=8"):
    aot_compile.make_topology_mesh(micro_experiment(data=16, fsdp=4), devices)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="the CUDA PJRT plugin is not installed (optional: "
                    + aot_compile.CUDA_PIP + ")")
def test_gpu_target_compile_without_a_gpu():
  devices = aot_compile.topology_devices("h100-2")
  assert len(devices) == 2 and devices[0].device_kind == "NVIDIA H100 80GB HBM3"
  exp = micro_experiment(data=2, fsdp=1)
  row = aot_compile.compile_report(exp, devices, "h100-2")
  assert row["fits"] is True and row["temp_bytes"] > 0 and row["matmul_flops_total"] > 0
