"""Train-step speed and memory of named configs: compile time, step time, videos/s, FLOPs, MFU.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python \
      -m benchmarks.train_step --configs default default:tiny bair:tiny ucf101:tiny

FLOPs: XLA's cost analysis of the compiled step (counts a loop body once) beside an analytic
count (every dot/conv of the step's jaxpr, scan bodies times their length); MFU uses the analytic
count against a float32 matmul peak measured in the same run. Memory is per device, from
compiled.memory_analysis() and from the shards of the train state.

    --configs default default_dit --widths 16,32   each config at each width: the U-Net's
                                     base_channels or the DiT's hidden_size (model.backbone)
    --fsdp_sweep 1,2,4,8 --devices 8     per-device param+EMA+optimizer bytes for fsdp=N
    --mesh_sweep '16,1,1 1,4,4' --devices 16   the same for data,fsdp,tensor meshes (abstract state:
                                     nothing allocated, so pod-size configs run anywhere)
    --preflight --mesh 1,8,1 --memory_limit_gb 16   compile for a mesh, exit 2 with advice if
                                                     the step needs more memory per device
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", nargs="+", default=["default", "default:tiny"])
  p.add_argument("--set", nargs="*", default=[], help="section.key=value overrides for every config")
  p.add_argument("--devices", type=int, default=-1,
                 help="CPU devices: -1 one per core like train.py (fitted to the first config), "
                      "N forces N, 0 JAX's default (1)")
  p.add_argument("--mesh", default="", help="data,fsdp,tensor (default: the config's mesh)")
  p.add_argument("--dtype", default="", help="model compute dtype override (float32, bfloat16)")
  p.add_argument("--remat", default="", help="model remat override (none, block)")
  p.add_argument("--widths", default="",
                 help="e.g. 16,32,64: run each config at each width (U-Net base_channels, DiT hidden_size)")
  p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
  p.add_argument("--no_run", action="store_true", help="compile only (no step times)")
  p.add_argument("--fsdp_sweep", default="", help="e.g. 1,2,4,8: state bytes per device per fsdp")
  p.add_argument("--mesh_sweep", default="",
                 help="e.g. '16,1,1 1,16,1 1,4,4': state bytes per device per data,fsdp,tensor mesh")
  p.add_argument("--preflight", action="store_true", help="compile and check --memory_limit_gb")
  p.add_argument("--memory_limit_gb", type=float, default=0.0)
  p.add_argument("--json", default="", help="also write the rows to this file")
  return p.parse_args(argv)


def overrides(args: argparse.Namespace) -> list[str]:
  out = list(args.set)
  if args.dtype:
    out.append(f"model.dtype={args.dtype}")
  if args.remat:
    out.append(f"model.remat={args.remat}")
  if args.mesh:
    for axis, size in zip(("data", "fsdp", "tensor"), args.mesh.split(",")):
      out.append(f"mesh.{axis}={int(size)}")
  return out


def width_runs(names: list[str], over: list[str], widths: str) -> list[tuple[str, list[str]]]:
  """(config, overrides) per config and width: the width is the field its backbone scales by."""
  from benchmarks import common
  if not widths:
    return [(name, over) for name in names]
  runs = []
  for name in names:
    dit = common.load_config(name, over).model.backbone == "dit"
    field = "model.hidden_size" if dit else "model.base_channels"
    runs += [(name, over + [f"{field}={int(w)}"]) for w in widths.split(",")]
  return runs


def state_bytes_per_device(state: Any) -> int:
  """Bytes of the train state held by the first device (its shards of every leaf)."""
  import jax
  dev = jax.devices()[0]
  total = 0
  for leaf in jax.tree.leaves(state):
    for shard in leaf.addressable_shards:
      if shard.device == dev:
        total += shard.data.nbytes
  return total


def memory_row(compiled: Any) -> dict[str, float]:
  """Per-device memory of a compiled step in GB (arguments, outputs, temporaries, peak estimate)."""
  m = compiled.memory_analysis()
  gb = lambda b: round(b / 1e9, 4)
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  return {"args_gb": gb(m.argument_size_in_bytes), "temp_gb": gb(m.temp_size_in_bytes),
          "out_gb": gb(m.output_size_in_bytes), "alias_gb": gb(m.alias_size_in_bytes),
          "peak_gb": gb(peak)}


def measure(name: str, over: list[str], args: argparse.Namespace, peak: float) -> dict[str, Any]:
  from benchmarks import common
  from vdm_jax.model import count_params
  from vdm_jax.parallel import make_mesh
  from vdm_jax.train.flops import compiled_flops, matmul_flops
  exp = common.load_config(name, over)
  mesh = make_mesh(exp.mesh.data, exp.mesh.fsdp, exp.mesh.tensor)
  step, state, _ = common.build_step(exp, mesh)
  batch = common.shard_batch(common.dummy_batch(exp), mesh)
  analytic = matmul_flops(step, state, batch)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  m = exp.model
  row = {"config": name, "backbone": m.backbone,
         "width": m.hidden_size if m.backbone == "dit" else m.base_channels,
         "mesh": dict(mesh.shape), "batch": exp.train.global_batch_size,
         "frames": exp.data.num_frames, "res": exp.data.resolution, "dtype": exp.model.dtype,
         "remat": exp.model.remat, "params": count_params(state["params"]),
         "compile_s": round(time.perf_counter() - t0, 1),
         "xla_gflop": round(compiled_flops(compiled) / 1e9, 2), "matmul_gflop": round(analytic / 1e9, 2),
         "state_gb_per_device": round(state_bytes_per_device(state) / 1e9, 4), **memory_row(compiled)}
  if args.preflight:
    row["preflight"] = preflight(row, args.memory_limit_gb)
  if args.no_run:
    return row
  times = common.time_calls(lambda: _step(compiled, state, batch), args.steps + 1)[1:]
  step_s = common.median(times)
  row.update(step_s=round(step_s, 3), steps_s=[round(t, 3) for t in times],
             videos_per_s=round(row["batch"] / step_s, 2),
             achieved_gflops=round(analytic / step_s / 1e9, 2),
             mfu_pct=round(100 * analytic / step_s / peak, 2), load=common.load_average())
  return row


def _step(compiled, state, batch):
  # The state is donated: keep the returned one in the caller's list cell.
  new_state, metrics = compiled(state, batch)
  state.clear()
  state.update(new_state)
  return metrics


def preflight(row: dict[str, Any], limit_gb: float) -> str:
  """'ok' or advice when the compiled step's per-device peak exceeds limit_gb."""
  if not limit_gb or row["peak_gb"] <= limit_gb:
    return "ok"
  return (f"needs {row['peak_gb']:.2f} GB per device > limit {limit_gb:.2f} GB: state "
          f"{row['state_gb_per_device']:.2f} GB (raise mesh.fsdp to shard it), temporaries "
          f"{row['temp_gb']:.2f} GB (set model.remat=block, model.attention_chunk_size, a smaller "
          "per-device batch via mesh.data or optim.grad_accum_steps, or model.dtype=bfloat16)")


def mesh_sweep(name: str, over: list[str], meshes: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
  """Per-device train-state bytes (params, EMA, optimizer) for each (data, fsdp, tensor) mesh.

  From the abstract state's shardings (train.state.abstract_train_state): nothing is allocated or
  compiled, so a pod-size config's sweep runs on a laptop with forced CPU devices.
  """
  import math

  import jax

  from benchmarks import common
  from vdm_jax.parallel import make_mesh
  from vdm_jax.train.optimizer import make_optimizer
  from vdm_jax.train.state import abstract_train_state

  def nbytes(tree: Any, per_device: bool) -> int:
    shape = (lambda x: x.sharding.shard_shape(x.shape)) if per_device else (lambda x: x.shape)
    return sum(math.prod(shape(x)) * x.dtype.itemsize for x in jax.tree.leaves(tree))

  rows = []
  for data, fsdp, tensor in meshes:
    exp = common.load_config(name, over)
    mesh = make_mesh(data, fsdp, tensor)
    _, _, state = abstract_train_state(exp.model, make_optimizer(exp.optim, 10), mesh, 0)
    total, per = nbytes(state, False), nbytes(state, True)
    row = {"config": name, "mesh": "x".join(str(v) for v in mesh.shape.values()),
           "fsdp": mesh.shape["fsdp"], "tensor": mesh.shape["tensor"],
           "state_mb_total": round(total / 1e6, 2), "state_mb_per_device": round(per / 1e6, 2),
           "fraction": round(per / total, 4)}
    for part in ("params", "ema", "opt_state"):
      row[f"{part}_fraction"] = round(nbytes(state[part], True) / nbytes(state[part], False), 4)
    rows.append(row)
  return rows


def parse_meshes(args: argparse.Namespace) -> list[tuple[int, int, int]]:
  """--mesh_sweep '8,1,1 1,4,2' and --fsdp_sweep 1,2,4 (data takes the rest) as (d, f, t) tuples."""
  meshes = [tuple(int(v) for v in m.split(",")) for m in args.mesh_sweep.split()]
  meshes += [(-1, int(n), 1) for n in args.fsdp_sweep.split(",") if n]
  bad = [m for m in meshes if len(m) != 3]
  if bad:
    raise SystemExit(f"--mesh_sweep takes data,fsdp,tensor triples separated by spaces; got {bad}")
  return meshes


def print_table(rows: list[dict[str, Any]], keys: list[str]) -> None:
  print(" | ".join(f"{k:>14s}" for k in keys))
  for r in rows:
    print(" | ".join(f"{str(r.get(k, '')):>14s}" for k in keys))


def main(argv: list[str]) -> None:
  args = parse(argv)
  os.environ.setdefault("VDM_DATA_DIR", "/tmp/vdm_data")
  from benchmarks import common
  from vdm_jax.train.flops import peak_flops_per_second
  over = overrides(args)
  common.setup_devices(args.devices, args.configs[0], over)
  if args.fsdp_sweep or args.mesh_sweep:
    rows = [r for name in args.configs for r in mesh_sweep(name, over, parse_meshes(args))]
    print_table(rows, ["config", "mesh", "state_mb_total", "state_mb_per_device", "fraction",
                       "params_fraction", "ema_fraction", "opt_state_fraction"])
  else:
    peak = peak_flops_per_second()
    rows = [measure(name, run_over, args, peak)
            for name, run_over in width_runs(args.configs, over, args.widths)]
    keys = ["config", "backbone", "width", "params", "compile_s", "step_s", "videos_per_s", "xla_gflop",
            "matmul_gflop", "achieved_gflops", "mfu_pct", "state_gb_per_device", "temp_gb", "peak_gb"]
    import jax
    print(f"{common.cpu_name()}; matmul peak {peak / 1e9:.1f} GFLOP/s; {jax.device_count()} devices; "
          f"load {common.load_average()}; "
          f"malloc {common.allocator()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print_table(rows, keys + (["preflight"] if args.preflight else []))
  print(json.dumps(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  if args.preflight and any(r.get("preflight", "ok") != "ok" for r in rows):
    for r in rows:
      print(f"PREFLIGHT FAILED {r['config']}: {r['preflight']}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main(sys.argv[1:])
