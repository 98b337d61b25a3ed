"""Benchmarks kept running: the FLOP count against XLA, the sampler, vs_pytorch and fewstep."""

import os

import jax
import jax.numpy as jnp
import pytest

from vdm_jax.train.flops import compiled_flops, jaxpr_matmul_flops, matmul_flops


def _xla_flops(fn, *args) -> float:
  return compiled_flops(jax.jit(fn).lower(*args).compile())


def test_dot_and_conv_flops_equal_xla_cost_analysis():
  x = jnp.ones((4, 8, 8, 5))
  k = jnp.ones((3, 3, 5, 7))
  w = jnp.ones((7, 11))

  def fn(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.einsum("nhwc,cd->nhwd", y, w)

  # VALID: XLA counts only taps inside the input, so with SAME padding it reports fewer FLOPs
  # than the analytic count (which counts the padded taps, as an im2col matmul computes them).
  expected = 2 * 4 * 6 * 6 * 7 * 9 * 5 + 2 * 4 * 6 * 6 * 7 * 11
  assert matmul_flops(fn, x, k, w) == expected
  assert _xla_flops(fn, x, k, w) == pytest.approx(expected, rel=1e-6)


def test_scan_body_counts_length_times():
  a = jnp.ones((16, 16))

  def scanned(a):
    return jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=5)[0]

  def unrolled(a):
    c = a
    for _ in range(5):
      c = c @ a
    return c

  per_dot = 2 * 16**3
  assert matmul_flops(scanned, a) == 5 * per_dot
  assert matmul_flops(unrolled, a) == _xla_flops(unrolled, a) == 5 * per_dot
  # XLA's cost analysis counts the loop body once: the reason for the analytic count.
  assert _xla_flops(scanned, a) < 5 * per_dot


def test_gradient_of_dense_is_three_matmuls():
  x, w = jnp.ones((8, 4)), jnp.ones((4, 6))
  loss = lambda w: jnp.sum(x @ w)
  assert jaxpr_matmul_flops(jax.make_jaxpr(jax.grad(loss))(w)) == 2 * (2 * 8 * 4 * 6)


def test_compiled_flops_count_every_device(devices):
  # XLA's cost analysis is of the per-device program; the count must be the whole call's.
  from jax.sharding import NamedSharding, PartitionSpec
  mesh = jax.make_mesh((len(devices),), ("data",))
  x = jax.device_put(jnp.ones((len(devices) * 4, 16, 16)), NamedSharding(mesh, PartitionSpec("data")))
  assert _xla_flops(lambda x: x @ x, x) == pytest.approx(2 * len(devices) * 4 * 16**3, rel=1e-6)


def test_mesh_sweep_shards_state_by_fsdp_and_tensor(devices):
  # The abstract sweep (nothing allocated): fsdp=8 holds about an eighth of the state per device,
  # data parallel holds all of it, and tensor parallel shards it too.
  from benchmarks.train_step import mesh_sweep
  rows = {r["mesh"]: r for r in mesh_sweep("default_dit", [], [(8, 1, 1), (1, 8, 1), (1, 4, 2)])}
  assert rows["8x1x1"]["fraction"] == 1.0
  assert rows["8x1x1"]["state_mb_total"] == rows["1x8x1"]["state_mb_total"] > 0
  assert 0.125 <= rows["1x8x1"]["params_fraction"] < 0.2
  assert rows["1x8x1"]["opt_state_fraction"] < 0.2
  assert rows["1x4x2"]["params_fraction"] < 0.25


def test_vs_pytorch_jax_worker_trains_and_denoises():
  # The JAX side of benchmarks/vs_pytorch.py (torch is not installed in CI): it must build, run a
  # train step and a denoiser call, and count the parameters it times.
  import argparse

  from benchmarks.vs_pytorch import jax_worker
  args = argparse.Namespace(frames=4, res=8, batch=8, jax_devices=0, jax_config="default:tiny",
                            jax_set=["model.image_size=8", "model.attention_resolutions=(4,)"])
  fns, params = jax_worker(args)
  fns["train"]()
  fns["denoise"]()
  assert params > 1000


def test_sampler_benchmark_runs_the_generation_chunk():
  # benchmarks/sampler.py compiles what sample.py compiles (it once imported a module that had
  # moved): a tiny frame-conditioned config, a multistep sampler, every step in one call.
  import argparse

  from benchmarks.sampler import measure
  args = argparse.Namespace(steps=2, batch=8, repeats=1, set=[])  # the 8 test devices
  row = measure("bair:tiny", "dpmpp2m", args)
  assert row["steps"] == 2 and row["call_s"] > 0 and row["frames_per_s"] > 0


def test_fewstep_curve_writes_points_resumes_and_tables(tmp_path, monkeypatch):
  # The quality-vs-calls benchmark on an untrained micro model (colour drift only, 2 videos):
  # a JSON per point with the cost, a table row per point, a plot; a rerun evaluates nothing.
  from benchmarks import fewstep
  from tests.test_sample_script import write_checkpoint
  from vdm_jax import evaluation
  workdir = str(tmp_path / "run")
  write_checkpoint(workdir, str(tmp_path / "tfds"))
  argv = ["--workdir", workdir, "--calls", "1,2", "--samplers", "dpmpp2m", "--metrics",
          "colour_drift", "--num_samples", "2", "--cache_dir", "", "--out_dir", str(tmp_path / "out")]
  rows = fewstep.run(fewstep.parse_args(argv))
  assert [r["point"] for r in rows] == ["dpmpp2m1", "dpmpp2m2"]
  assert all(r["seconds_per_video"] > 0 and r["colour_drift_generated"] > 0 for r in rows)
  assert [r["model_calls"] for r in rows] == [1, 2] and rows[0]["shape"][0] == 4
  monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("point evaluated again"))
  again = fewstep.run(fewstep.parse_args(argv))
  assert again == rows
  assert fewstep.table(rows).count("\n") == 2 + len(rows)
  fewstep.plot(rows, str(tmp_path / "c.png"), key="colour_drift_generated")
  assert os.path.getsize(tmp_path / "c.png") > 1000
