"""Sampling speed: DDIM and ancestral steps/s, frames/s and compile time for named configs.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python \
      -m benchmarks.sampler --configs default:tiny --steps 16 --batch 4

One jitted call of the sampler's chunk function (vdm_jax.generation.sampler, what sample.py
compiles) runs all `--steps` steps (a fori_loop), so
steps/s = steps / call time and frames/s = batch * frames * steps/s / steps (frames finished).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any


def measure(name: str, sampler: str, args: argparse.Namespace) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp

  from benchmarks import common
  from vdm_jax import diffusion
  from vdm_jax.generation.sampler import make_chunk_fn
  from vdm_jax.model import create_model, split_params
  from vdm_jax.parallel import batch_sharding, make_mesh
  exp = common.load_config(name, args.set)
  mesh = make_mesh()
  graphdef, model_state = create_model(exp.model, mesh, 0)
  params, rest = split_params(model_state)
  cfg = diffusion.SamplerConfig(sampler, args.steps, gamma=0.1 if sampler == "ancestral" else 0.0)
  fn = make_chunk_fn(graphdef, rest, schedule=exp.diffusion.schedule(exp.data.resolution),
                     sampler_config=cfg, prediction=exp.model.prediction,
                     num_classes=exp.model.num_classes)
  batch = common.dummy_batch(exp, args.batch)
  noise = jax.device_put(jax.random.normal(jax.random.key(1), batch["video"].shape),
                         batch_sharding(mesh))  # the batch split over the devices, as sample.py does
  carry = diffusion.initial_carry(noise, cfg)
  cond = _cond(exp, batch)
  known = jnp.zeros(batch["video"].shape[:2], jnp.float32)
  call_args = (params, carry, jax.random.key(2), cond, batch["video"], known,
               jnp.int32(0), jnp.int32(args.steps))  # one call runs every step
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*call_args).compile()
  compile_s = time.perf_counter() - t0
  times = common.time_calls(lambda: compiled(*call_args), args.repeats + 1)[1:]
  call_s = common.median(times)
  frames = args.batch * exp.data.num_frames
  return {"config": name, "sampler": sampler, "devices": jax.device_count(), "batch": args.batch,
          "frames": exp.data.num_frames,
          "res": exp.data.resolution, "steps": args.steps, "compile_s": round(compile_s, 1),
          "call_s": round(call_s, 3), "steps_per_s": round(args.steps / call_s, 2),
          "frames_per_s": round(frames / call_s, 3), "load": common.load_average()}


def _cond(exp: Any, batch: dict) -> Any:
  import jax.numpy as jnp

  from vdm_jax.denoiser import Conditioning, frame_condition
  labels = batch["label"] if exp.model.num_classes else None
  if not exp.model.cond_channels:
    return Conditioning(labels=labels)
  b, t = batch["video"].shape[:2]
  known = (jnp.arange(t) < max(exp.train.cond_frames, 1))[None] & jnp.ones((b, 1), bool)
  return dataclasses.replace(frame_condition(batch["video"], known), labels=labels)


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", nargs="+", default=["default:tiny"])
  p.add_argument("--samplers", nargs="+", default=["ddim", "ancestral"])
  p.add_argument("--set", nargs="*", default=[])
  p.add_argument("--steps", type=int, default=16, help="denoiser evaluations per sample")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--devices", type=int, default=-1,
                 help="CPU devices: -1 one per core like sample.py, N forces N, 0 JAX's default (1)")
  args = p.parse_args(argv)
  os.environ.setdefault("VDM_DATA_DIR", "/tmp/vdm_data")
  from benchmarks import common
  common.setup_devices(args.devices, batch=args.batch)
  rows = [measure(c, s, args) for c in args.configs for s in args.samplers]
  print(f"{common.cpu_name()}; load {common.load_average()}; malloc {common.allocator()}")
  keys = ["config", "sampler", "devices", "batch", "steps", "compile_s", "call_s", "steps_per_s",
          "frames_per_s"]
  print(" | ".join(f"{k:>12s}" for k in keys))
  for r in rows:
    print(" | ".join(f"{str(r[k]):>12s}" for k in keys))
  print(json.dumps(rows))


if __name__ == "__main__":
  main(sys.argv[1:])
