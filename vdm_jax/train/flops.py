"""FLOPs of a compiled step and the machine's measured matmul peak, for model FLOPs utilisation."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp


def compiled_flops(compiled) -> float:
  """FLOPs of one call by XLA's cost analysis (0.0 if unavailable).

  Note: XLA counts a loop body once, so scanned or chunked code (gradient accumulation, chunked
  attention) under-reports; benchmarks/train_step.py checks it against an analytic count.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends have no cost model
    return 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


@functools.lru_cache(maxsize=None)
def peak_flops_per_second(size: int = 1024, repeats: int = 5) -> float:
  """Measured float32 matmul FLOP/s of the machine (best of `repeats`).

  On CPU every forced device shares the same cores, so one device's matmul peak is the machine's;
  on accelerators it is multiplied by the device count.
  """
  a = jnp.ones((size, size), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  per_device = 2.0 * size**3 / best
  return per_device if jax.default_backend() == "cpu" else per_device * jax.device_count()
