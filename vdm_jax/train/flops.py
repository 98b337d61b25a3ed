"""FLOPs of a compiled step and the machine's measured matmul peak, for model FLOPs utilisation."""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp


def compiled_flops(compiled) -> float:
  """FLOPs of one call over all its devices, by XLA's cost analysis (0.0 if unavailable).

  XLA analyses the partitioned per-device program, so its count is multiplied by the number of
  devices the call runs on (`compiled_num_devices`).
  Note: XLA counts a loop body once, so scanned or chunked code (gradient accumulation, chunked
  attention) under-reports; benchmarks/train_step.py checks it against an analytic count.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends have no cost model
    return 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0)) * compiled_num_devices(compiled)


def compiled_num_devices(compiled) -> int:
  """The number of devices a compiled jitted call runs on (the widest of its input shardings)."""
  shardings = jax.tree.leaves(compiled.input_shardings,
                              is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
  return max((s.num_devices for s in shardings if isinstance(s, jax.sharding.Sharding)), default=1)


@functools.cache
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


def _dot_general_flops(eqn) -> float:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  contract = math.prod(lhs.shape[d] for d in lc)
  out = math.prod(eqn.outvars[0].aval.shape)
  return 2.0 * out * contract


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval
  dn = eqn.params["dimension_numbers"]
  kernel_spatial = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
  cin_per_group = rhs.shape[dn.rhs_spec[1]]
  out = math.prod(eqn.outvars[0].aval.shape)
  return 2.0 * out * kernel_spatial * cin_per_group


def _sub_jaxprs(eqn):
  """(jaxpr, multiplicity) of the sub-programs of one equation (scan bodies count `length` times)."""
  prim = eqn.primitive.name
  if prim == "cond":
    branches = [b.jaxpr for b in eqn.params["branches"]]
    return [(max(branches, key=jaxpr_matmul_flops), 1)]
  mult = eqn.params.get("length", 1) if prim == "scan" else 1
  subs = []
  for value in eqn.params.values():
    for v in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(v, jex_core.ClosedJaxpr):
        subs.append((v.jaxpr, mult))
      elif isinstance(v, jex_core.Jaxpr):
        subs.append((v, mult))
  return subs


def jaxpr_matmul_flops(jaxpr) -> float:
  """Multiply-add FLOPs (2 per MAC) of every dot_general and convolution in a jaxpr.

  Unlike XLA's cost analysis it multiplies a scan body by its length (chunked attention, gradient
  accumulation), so it is the analytic count MFU should use. Elementwise ops are not counted; a
  while loop's body counts once (its trip count is unknown).
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    for sub, mult in _sub_jaxprs(eqn):
      total += mult * jaxpr_matmul_flops(sub)
  return total


def matmul_flops(fn, *args, **kwargs) -> float:
  """jaxpr_matmul_flops of fn(*args, **kwargs) (traced, never run or compiled)."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args, **kwargs))
