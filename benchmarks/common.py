"""Shared helpers of the benchmarks: a config by name with overrides, the jitted step, timing.

Benchmarks set XLA/JAX flags before importing jax, so import this module after parsing flags.
"""

from __future__ import annotations

import ast
import importlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def load_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
  """'default', 'default:tiny', 'bair:tiny' ... -> ExperimentConfig, with 'section.key=value' overrides."""
  from vdm_jax.config import ExperimentConfig
  module, _, variant = name.partition(":")
  c = importlib.import_module(f"configs.{module}").get_config(variant)
  for kv in overrides:
    key, value = kv.split("=", 1)
    section, field = key.split(".")
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed = value
    c[section][field] = parsed
  return ExperimentConfig.from_config_dict(c)


def setup_devices(n: int, config_name: str = "", overrides: list[str] | tuple[str, ...] = (),
                  batch: int = 0) -> int:
  """Sets the CPU device count before JAX starts its backend; returns it (0: JAX's default).

  n > 0 forces n devices; -1 does what train.py does by default (--cpu_devices=-1): one device per
  core, fitted to `config_name`'s batch and mesh (or to `batch`), unless XLA_FLAGS already forces a
  count.
  """
  from vdm_jax.parallel.distributed import resolve_cpu_devices
  mesh = None
  if n == -1 and config_name:
    exp = load_config(config_name, overrides)
    batch = exp.train.global_batch_size // max(exp.optim.grad_accum_steps, 1)
    mesh = {"data": exp.mesh.data, "fsdp": exp.mesh.fsdp, "tensor": exp.mesh.tensor}
  count = resolve_cpu_devices(n, batch, mesh)
  if count:
    jax.config.update("jax_num_cpu_devices", count)
  return count


def dummy_batch(exp: Any, batch_size: int | None = None) -> dict[str, jax.Array]:
  """A batch of the config's shapes: video [B, T, H, W, C] in [-1, 1], label [B], image_mask [B, T]."""
  b = batch_size or exp.train.global_batch_size
  t, r, c = exp.data.num_frames, exp.data.resolution, exp.model.in_channels
  video = jax.random.uniform(jax.random.key(0), (b, t, r, r, c), minval=-1.0, maxval=1.0)
  return {"video": video, "label": jnp.zeros((b,), jnp.int32),
          "image_mask": jnp.zeros((b, t), bool)}


def build_step(exp: Any, mesh: Any, flatten_optimizer: bool = False) -> tuple[Callable, dict, Any]:
  """(jitted train_step with donated state, state, graphdef) for the config on `mesh`.

  flatten_optimizer wraps the optimizer in optax.flatten (one flat vector instead of one update per
  parameter leaf), to measure what that does to compile time.
  """
  from vdm_jax.train.optimizer import learning_rate_schedule, make_optimizer
  from vdm_jax.train.state import create_train_state
  from vdm_jax.train.step import make_train_step
  steps = exp.train.num_steps
  tx = make_optimizer(exp.optim, steps)
  if flatten_optimizer:
    import optax
    tx = optax.flatten(tx)
  graphdef, rest, state = create_train_state(exp.model, tx, mesh, 0)
  step = make_train_step(graphdef, rest, tx, learning_rate_schedule(exp.optim, steps),
                         model_cfg=exp.model, diffusion_cfg=exp.diffusion,
                         schedule=exp.diffusion.schedule(), optim_cfg=exp.optim, train_cfg=exp.train)
  return jax.jit(step, donate_argnums=0), state, graphdef


def shard_batch(batch: dict, mesh: Any) -> dict:
  """Puts the batch's leading axis over the mesh's data-parallel axes (data, fsdp)."""
  from jax.sharding import NamedSharding, PartitionSpec
  axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
  spec = lambda x: PartitionSpec(axes, *([None] * (x.ndim - 1)))
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), batch)


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls of fn() (each blocked until ready)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def median(xs: list[float]) -> float:
  return statistics.median(xs) if xs else float("nan")


def load_average() -> str:
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def allocator() -> str:
  """The preloaded malloc: 'tcmalloc', 'mimalloc' or 'glibc' (vdm_jax.runtime)."""
  from vdm_jax.runtime import preloaded_allocator
  return preloaded_allocator()


def cpu_name() -> str:
  """The CPU model and core count, e.g. 'Intel(R) Xeon(R) Processor x 2 cores (avx512, amx)'.

  Numbers are only comparable on the same kind of CPU: the developers' machines have been AMD Zen3
  (AVX2) and Intel Xeon (AVX-512, AMX) on different days, with different matmul peaks.
  """
  name, flags = "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and name == "unknown CPU":
          name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
          flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  isa = [tag for tag, flag in (("avx2", "avx2"), ("avx512", "avx512f"), ("amx", "amx_tile"))
         if flag in flags]
  from vdm_jax.parallel.distributed import cpu_cores
  return f"{name} x {cpu_cores()} cores ({', '.join(isa) or 'no AVX2'})"
