"""Forward+backward time of the U-Net's building blocks in their variants, measured alternately.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python -m benchmarks.ops

Each case is value_and_grad of sum(f(x)**2) w.r.t. x and the weights at the shapes of the default
config's first level ([B*T, 32, 32, C]); rounds alternate the cases so load changes hit all alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def conv_cases(n: int, hw: int, cin: int, cout: int):
  import jax
  import jax.numpy as jnp

  from vdm_jax.model.layers import _im2col_conv
  x = jax.random.normal(jax.random.key(0), (n, hw, hw, cin))
  k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.1

  def lax_conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def shifted(x, k):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(xp[:, dy:dy + hw, dx:dx + hw] @ k[dy, dx] for dy in range(3) for dx in range(3))

  im2col = lambda x, k: _im2col_conv(x, k, 1)
  return {f"conv{cin}->{cout} {name}": (fn, (x, k))
          for name, fn in (("lax", lax_conv), ("im2col", im2col), ("shifted", shifted))}


def norm_cases(n: int, t: int, hw: int, c: int, groups: int):
  import jax
  import jax.numpy as jnp
  x = jax.random.normal(jax.random.key(0), (n, t, hw, hw, c))
  scale = jnp.ones((c,))

  def two_pass(x, s):  # the original formulation: mean, then mean of squared deviations
    xg = x.reshape(*x.shape[:-1], groups, c // groups)
    axes = (2, 3, 5)
    mean = jnp.mean(xg, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
    return ((xg - mean) * jax.lax.rsqrt(var + 1e-6)).reshape(x.shape) * s

  def one_pass(x, s):  # E[x], E[x^2] in one reduction, folded into one scale and shift per channel
    xg = x.reshape(*x.shape[:-1], groups, c // groups)
    axes = (2, 3, 5)
    mean = jnp.mean(xg, axis=axes)
    var = jnp.maximum(jnp.mean(jnp.square(xg), axis=axes) - jnp.square(mean), 0.0)
    inv = jax.lax.rsqrt(var + 1e-6)  # [N, T, G]
    a = jnp.repeat(inv, c // groups, axis=-1) * s  # [N, T, C]
    b = -jnp.repeat(mean * inv, c // groups, axis=-1) * s
    return x * a[:, :, None, None] + b[:, :, None, None]

  return {f"groupnorm C={c} G={groups} {name}": (fn, (x, scale))
          for name, fn in (("two_pass", two_pass), ("one_pass", one_pass))}


def run_cases(cases: dict, rounds: int) -> dict:
  import jax
  import jax.numpy as jnp
  fns = {}
  for name, (fn, args) in cases.items():
    loss = lambda *a, fn=fn: jnp.sum(jnp.square(fn(*a)))
    g = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args)))))
    jax.block_until_ready(g(*args))
    fns[name] = (g, args)
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, (g, args) in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(g(*args))
      times[name].append(time.perf_counter() - t0)
  return times


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--frames", type=int, default=64, help="B*T")
  args = p.parse_args(argv)
  from benchmarks import common
  cases = {}
  cases.update(conv_cases(args.frames, 32, 16, 16))
  cases.update(conv_cases(args.frames, 32, 32, 16))
  cases.update(norm_cases(args.frames // 8, 8, 32, 16, 16))
  times = run_cases(cases, args.rounds)
  for name, ts in times.items():
    print(f"{name:28s} median {1e3 * common.median(ts):8.1f} ms  min {1e3 * min(ts):8.1f} ms")
  print("load average", common.load_average(), "malloc", common.allocator())
  print(json.dumps({k: [round(t, 4) for t in v] for k, v in times.items()}))


if __name__ == "__main__":
  main(sys.argv[1:])
