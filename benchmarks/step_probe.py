"""Times the train step of one config, for measuring one optimisation at a time.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python \
      -m benchmarks.step_probe --config default --steps 20 [--devices 1]

Prints compile seconds (wall and process CPU), XLA FLOPs, temp memory, each step's wall and CPU
seconds (CPU time of all threads is less sensitive to other processes on the cores than wall
time), the medians and the load average. --profile DIR writes a jax.profiler trace of two steps
(open with TensorBoard/Perfetto); --op_table prints the heaviest HLO ops by XLA's per-op cost estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="default", help="configs/<name>.py[:variant]")
  p.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--devices", type=int, default=-1,
                 help="CPU devices: -1 one per core like train.py, N forces N, 0 JAX's default (1)")
  p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before JAX starts")
  p.add_argument("--profile", default="", help="directory for a jax.profiler trace")
  p.add_argument("--json", action="store_true")
  p.add_argument("--flatten_optimizer", action="store_true", help="wrap the optimizer in optax.flatten")
  return p.parse_args(argv)


def print_op_table(trace_dir: str, top: int = 25) -> None:
  """Sums the durations of the CPU trace events (XLA thunks/fusions) by name; prints the top."""
  import collections
  import glob

  from jax._src.lib import _profile_data
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
  data = _profile_data.ProfileData.from_file(path)
  total: dict[str, float] = collections.defaultdict(float)
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        total[(line.name, ev.name)] += ev.duration_ns / 1e6
  rows = sorted(total.items(), key=lambda kv: -kv[1])[:top]
  for (line, name), ms in rows:
    print(f"{ms:10.1f} ms  {line[:24]:24s} {name[:90]}")


def main(argv: list[str]) -> None:
  args = parse(argv)
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  os.environ.setdefault("VDM_DATA_DIR", "/tmp/vdm_data")
  import jax

  from benchmarks import common
  from vdm_jax.parallel import make_mesh
  from vdm_jax.train.flops import compiled_flops
  common.setup_devices(args.devices, args.config, args.set)
  exp = common.load_config(args.config, args.set)
  mesh = make_mesh(exp.mesh.data, exp.mesh.fsdp, exp.mesh.tensor)
  step, state, _ = common.build_step(exp, mesh, args.flatten_optimizer)
  batch = common.shard_batch(common.dummy_batch(exp), mesh)
  t0, c0 = time.perf_counter(), time.process_time()
  compiled = step.lower(state, batch).compile()
  compile_s, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
  times, cpu = [], []
  for _ in range(args.steps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  if args.profile:
    with jax.profiler.trace(args.profile):
      for _ in range(2):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
  if args.profile:
    print_op_table(args.profile)
  mem = compiled.memory_analysis()
  out = {"config": args.config, "set": args.set, "cpu": common.cpu_name(), "devices": jax.device_count(),
         "mesh": dict(mesh.shape), "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "allocator": common.allocator(), "flatten_optimizer": args.flatten_optimizer,
         "compile_s": round(compile_s, 1),
         "compile_cpu_s": round(compile_cpu, 1),
         "gflop": round(compiled_flops(compiled) / 1e9, 2),
         "temp_gb": round(mem.temp_size_in_bytes / 1e9, 3),
         "steps_s": [round(t, 3) for t in times], "median_s": round(common.median(times[1:]), 3),
         "cpu_s": [round(t, 3) for t in cpu], "median_cpu_s": round(common.median(cpu[1:]), 3),
         "loss": float(metrics["loss"]), "load": common.load_average()}
  print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
  main(sys.argv[1:])
