r"""Compiles the real train step ahead of time for a TPU slice on this (CPU) machine: does it fit?

    python scripts/aot_compile.py --config configs/ucf101.py --topology v5p-8
    python scripts/aot_compile.py --config configs/bair.py --topology v5e-256 \
        --config.mesh.fsdp=4 --json aot.json --markdown aot.md
    python scripts/aot_compile.py --config configs/default.py:tiny --topology cpu   # this machine

The mesh is the config's mesh section over the topology's devices; the train state is abstract
(shapes and shardings, vdm_jax.train.state.abstract_train_state), so nothing is allocated. Prints,
per device: arguments (state + batch shard), outputs, temporaries, generated code, their total
against the chip's HBM, XLA's FLOPs and bytes accessed per step, and the compile time.

Topologies: v4-N, v5p-N (N TensorCores, 2 per chip: v5p-8 = 4 chips), v5e-N, v6e-N (N chips), a raw
libtpu name such as v5e:4x4, or cpu (this machine's devices, e.g. 8 forced CPU devices).
TPU topologies need libtpu, an optional dependency: the version jax[tpu]==0.10.2 pins is
    pip install "libtpu==0.0.42.*"
GPU targets (h100-N: N H100 80GB, 8 per host) need no GPU either, only the CUDA PJRT plugin, which
describes compile-only devices from a target config (XLA's H100 spec, below) instead of a GPU:
    pip install "jax-cuda12-plugin==0.10.2" "jax-cuda12-pjrt==0.10.2"   # no [with-cuda] libraries
Keep it out of an environment that trains on CPU (jax then loads it at every start).
XLA's GPU compiler has no cost model for compile-only devices: FLOPs are reported as 0 there.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import sys
import time
from typing import Any

# Runnable as `python scripts/aot_compile.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LIBTPU_PIP = 'pip install "libtpu==0.0.42.*"'  # what jax[tpu]==0.10.2 requires (its METADATA)
CUDA_PIP = 'pip install "jax-cuda12-plugin==0.10.2" "jax-cuda12-pjrt==0.10.2"'
GIB = 2**30
# HBM per JAX device (one chip; v4 and v5p run a chip's two TensorCores as one megacore device).
HBM_BYTES = {"TPU v4": 32 * GIB, "TPU v5": 95 * GIB, "TPU v5 lite": 16 * GIB, "TPU v6 lite": 32 * GIB,
             "NVIDIA H100 80GB HBM3": 84942979072}
# XLA's GpuTargetConfigProto of an H100 SXM (xla/backends/gpu/target_config/specs/h100_sxm.txtpb, the
# fields XLA 0.10.2 knows): what the CUDA plugin would otherwise read from a GPU.
H100_TARGET_CONFIG = """gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84942979072 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA" dnn_version_info { major: 9 minor: 8 } device_description_str: "NVIDIA H100 80GB HBM3"
"""
# Chips -> ICI shape of a slice (as Cloud TPU lays them out).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
# User-facing prefix -> (libtpu generation, ICI shapes, TensorCores per chip in the name's count).
_GENERATIONS = {"v4": ("v4", _SHAPES_3D, 2), "v5p": ("v5p", _SHAPES_3D, 2),
                "v5e": ("v5e", _SHAPES_2D, 1), "v5litepod": ("v5e", _SHAPES_2D, 1),
                "v6e": ("v6e", _SHAPES_2D, 1)}


class LibtpuMissing(RuntimeError):
  """libtpu (or, for a GPU target, the CUDA PJRT plugin) is not installed: no devices to compile for."""


def tpu_topology_name(name: str) -> str:
  """'v5p-8' -> 'v5p:2x2x1' (4 chips), 'v5e-256' -> 'v5e:16x16'; 'v5e:4x4' is returned as it is.

  Raises:
    ValueError: for an unknown generation or a size with no standard slice shape.
  """
  if ":" in name:
    return name
  prefix, _, count = name.partition("-")
  if prefix not in _GENERATIONS or not count.isdigit():
    raise ValueError(f"--topology={name!r}: use cpu, <generation>-<size> with generation in "
                     f"{sorted(_GENERATIONS)} (e.g. v5p-8, v5e-16), or a libtpu name like v5e:4x4")
  generation, shapes, cores = _GENERATIONS[prefix]
  chips = int(count) // cores
  if chips not in shapes:
    sizes = sorted(n * cores for n in shapes)
    raise ValueError(f"--topology={name!r}: {prefix} slices come in sizes {sizes}")
  return f"{generation}:{shapes[chips]}"


def topology_devices(name: str) -> list[Any]:
  """The devices of a topology: this machine's for 'cpu', compile-only TPU devices otherwise.

  Raises:
    LibtpuMissing: for a TPU topology without libtpu (the message holds the pip command).
  """
  import jax
  if name == "cpu":
    return jax.devices()
  if name.startswith("h100-"):
    return gpu_devices(int(name.partition("-")[2]))
  topology = tpu_topology_name(name)
  from jax.experimental import topologies
  # Compile-only use never touches a TPU: skip libtpu's one-process-per-machine lock file, so several
  # compiles (and tests) can run side by side.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
  except RuntimeError as e:
    if "TPU support not installed" in str(e):
      raise LibtpuMissing(f"--topology={name} needs libtpu (an optional dependency): {LIBTPU_PIP}"
                          ) from e
    raise


def has_cuda_plugin() -> bool:
  """Whether jax's CUDA PJRT plugin (jax-cuda12-plugin) is installed."""
  import importlib.util
  try:
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:  # no jax_plugins namespace at all
    return False


def gpu_devices(count: int) -> list[Any]:
  """`count` compile-only H100s (8 per host), described by H100_TARGET_CONFIG; no GPU needed.

  Raises:
    LibtpuMissing: without the CUDA PJRT plugin (the message holds the pip command).
  """
  from jax.experimental import topologies
  if not has_cuda_plugin():
    raise LibtpuMissing(f"--topology=h100-{count} needs the CUDA PJRT plugin (no GPU): {CUDA_PIP}")
  if count < 1 or (count > 8 and count % 8):
    raise ValueError(f"--topology=h100-{count}: use 1 to 8 GPUs, or a multiple of 8 (8 per host)")
  hosts, per_host = (count // 8, 8) if count > 8 else (1, count)
  topology = topologies.get_topology_desc(platform="cuda", topology_name="",
                                          topology=f"1x{hosts}x{per_host}",
                                          target_config=H100_TARGET_CONFIG)
  return list(topology.devices)


def check_batch(exp: Any, mesh_shape: dict[str, int]) -> None:
  """ValueError unless the global batch (and each micro-batch) divides over data x fsdp."""
  from vdm_jax.parallel import num_batch_devices
  devices = num_batch_devices(mesh_shape)
  gbs, accum = exp.train.global_batch_size, exp.optim.grad_accum_steps
  if gbs % accum or (gbs // accum) % devices:
    raise ValueError(f"train.global_batch_size={gbs} in optim.grad_accum_steps={accum} micro-batches "
                     f"does not divide over the {devices} batch devices (mesh data x fsdp "
                     f"{mesh_shape}); set --config.train.global_batch_size to a multiple of "
                     f"{devices * accum}")


def make_topology_mesh(exp: Any, devices: list[Any]) -> Any:
  """The config's (data, fsdp, tensor) mesh over `devices`, in ICI order on a TPU topology."""
  import jax
  from jax.experimental import mesh_utils

  from vdm_jax.parallel import make_mesh
  mesh = make_mesh(**dataclasses.asdict(exp.mesh), devices=devices)  # checks and fills the sizes
  if devices[0].platform != "tpu":
    return mesh
  try:
    ordered = mesh_utils.create_device_mesh(mesh.devices.shape, devices)
  except NotImplementedError as e:  # jax's message names logical indices, not our config fields
    coords = [getattr(d, "coords", None) for d in devices]
    physical = ("x".join(str(max(c[i] for c in coords) + 1) for i in range(len(coords[0])))
                if all(coords) else "?")
    raise ValueError(
        f"the mesh data x fsdp x tensor = {' x '.join(map(str, mesh.devices.shape))} does not map "
        f"onto the topology's physical chip grid {physical}; each mesh "
        "axis must be a product of physical axis sizes, e.g. on v5e-64 (8x8) use "
        "--config.mesh.fsdp=8 (data 8) rather than fsdp=4 (data 16)") from e
  return jax.sharding.Mesh(ordered, mesh.axis_names, axis_types=mesh.axis_types)


def abstract_batch(exp: Any, mesh: Any) -> dict[str, Any]:
  """ShapeDtypeStructs of one global batch (the loader's keys), split over the batch axes."""
  import jax
  import jax.numpy as jnp

  from vdm_jax.parallel import batch_sharding
  b, sharding = exp.train.global_batch_size, batch_sharding(mesh)
  t, r, c = exp.data.num_frames + exp.data.image_frames, exp.data.resolution, exp.model.in_channels
  return {"video": jax.ShapeDtypeStruct((b, t, r, r, c), jnp.float32, sharding=sharding),
          "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=sharding),
          "image_mask": jax.ShapeDtypeStruct((b, t), jnp.bool_, sharding=sharding)}


def lower_train_step(exp: Any, mesh: Any) -> tuple[Any, tuple[Any, ...]]:
  """(the jitted, donated train step, its abstract arguments (state, batch, rest)) on `mesh`.

  The step is loop.py's (make_train_step) with the model's rng-stream variables as a third
  argument, since compile-only devices cannot hold the concrete ones it usually closes over.
  """
  import jax

  from vdm_jax.train.optimizer import learning_rate_schedule, make_optimizer
  from vdm_jax.train.state import abstract_train_state
  from vdm_jax.train.step import make_train_step
  tx = make_optimizer(exp.optim, exp.train.num_steps)
  lr = learning_rate_schedule(exp.optim, exp.train.num_steps)
  graphdef, rest, state = abstract_train_state(exp.model, tx, mesh, exp.train.seed)

  def step(state, batch, rest):
    return make_train_step(graphdef, rest, tx, lr, model_cfg=exp.model, diffusion_cfg=exp.diffusion,
                           schedule=exp.diffusion.schedule(exp.data.resolution),
                           optim_cfg=exp.optim, train_cfg=exp.train)(state, batch)

  shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
  batch = abstract_batch(exp, mesh)
  jitted = jax.jit(step, in_shardings=(shardings(state), shardings(batch), shardings(rest)),
                   out_shardings=(shardings(state), None), donate_argnums=0)
  return jitted, (state, batch, rest)


def bytes_per_device(tree: Any) -> int:
  """Bytes of one device's shard of every leaf of an abstract, sharded pytree."""
  import jax
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def compile_report(exp: Any, devices: list[Any], topology: str = "cpu") -> dict[str, Any]:
  """Compiles exp's train step for `devices` and reports its per-device memory, FLOPs and time.

  Memory is XLA's buffer assignment for one device (compiled.memory_analysis()); total_gib =
  arguments + outputs - aliased (the donated state) + temporaries + generated code, checked against
  the chip's HBM where known. FLOPs and bytes are XLA's cost analysis of one device's program.
  """
  import jax

  from vdm_jax.model import count_params
  from vdm_jax.train import flops as flops_lib
  exp.model.validate(exp.data.num_frames + exp.data.image_frames, exp.data.resolution,
                     exp.data.resolution)
  mesh = make_topology_mesh(exp, devices)
  check_batch(exp, dict(mesh.shape))
  jitted, args = lower_train_step(exp, mesh)
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  print(f"aot_compile: lowered in {t1 - t0:.1f} s; compiling for {len(devices)} x "
        f"{devices[0].device_kind} ...", file=sys.stderr, flush=True)
  compiled = lowered.compile()
  t2 = time.perf_counter()
  row = {"topology": topology, "device_kind": devices[0].device_kind, "devices": len(devices),
         "mesh": dict(mesh.shape), "global_batch": exp.train.global_batch_size,
         "frames": exp.data.num_frames + exp.data.image_frames, "resolution": exp.data.resolution,
         "dtype": exp.model.dtype, "param_dtype": exp.model.param_dtype,
         "attention_impl": exp.model.attention_impl, "remat": exp.model.remat,
         "params": count_params(exp.model), "lower_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1)}
  row["params_bytes"] = row["params"] * jax.numpy.dtype(exp.model.param_dtype).itemsize
  row["state_bytes_per_device"] = bytes_per_device(args[0])
  row.update(_memory(compiled, HBM_BYTES.get(devices[0].device_kind)))
  row.update(_cost(compiled, flops_lib.compiled_flops(compiled)))
  # Every dot and conv of the global step (scan bodies times their length): a FLOP count where XLA
  # has no cost model (GPU targets) or counts a loop body once.
  row["matmul_flops_total"] = flops_lib.matmul_flops(jitted, *args)
  row["matmul_tflop_total"] = round(row["matmul_flops_total"] / 1e12, 3)
  return row


def _memory(compiled: Any, hbm: int | None) -> dict[str, Any]:
  m = compiled.memory_analysis()
  sizes = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
           "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
           "code": m.generated_code_size_in_bytes}
  sizes["total"] = (sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
                    + sizes["code"])
  gib = lambda b: round(b / GIB, 3)
  out = {f"{k}_bytes": int(v) for k, v in sizes.items()}
  out.update({f"{k}_gib": gib(v) for k, v in sizes.items()})
  out["hbm_gib"] = gib(hbm) if hbm else None
  out["fits"] = None if not hbm else bool(sizes["total"] <= hbm)
  return out


def _cost(compiled: Any, total_flops: float) -> dict[str, Any]:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends have no cost model
    cost = {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  optimal = cost.get("optimal_seconds")
  return {"flops_per_device": float(cost.get("flops", 0.0)), "flops_total": float(total_flops),
          "tflop_per_device": round(cost.get("flops", 0.0) / 1e12, 4),
          "tflop_total": round(total_flops / 1e12, 3),
          "gb_accessed_per_device": round(cost.get("bytes accessed", 0.0) / 1e9, 3),
          "xla_optimal_s": round(optimal, 4) if optimal is not None and optimal > 0 else None}


def markdown_row(config_name: str, row: dict[str, Any]) -> str:
  """One row of the RESULTS.md table."""
  mesh = "x".join(str(row["mesh"][a]) for a in ("data", "fsdp", "tensor"))
  fits = {True: "yes", False: "**no**", None: "?"}[row["fits"]]
  hbm = f"{row['hbm_gib']:g}" if row["hbm_gib"] else "-"
  return (f"| {config_name} | {row['topology']} ({row['devices']} x {row['device_kind']}) | {mesh} | "
          f"{row['global_batch']} | {row['dtype']}/{row['param_dtype']} | {row['params'] / 1e6:.1f}M | "
          f"{row['argument_gib']:.2f} | {row['temp_gib']:.2f} | {row['total_gib']:.2f} / {hbm} | {fits} | "
          f"{row['tflop_per_device']:.2f} | {row['gb_accessed_per_device']:.1f} | {row['compile_s']:.0f} |")


MARKDOWN_HEADER = (
    "| config | topology | mesh d x f x t | batch | dtype | params | args GiB/dev | temp GiB/dev | "
    "total GiB/dev / HBM | fits | TFLOP/dev/step | GB accessed/dev | compile s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def main(argv: list[str]) -> None:
  from absl import flags

  flags_ = flags.FLAGS
  del argv
  from vdm_jax.config import ExperimentConfig
  from vdm_jax.versions import library_versions
  name = flags_["config"].config_filename
  exp = ExperimentConfig.from_config_dict(flags_.config)
  try:
    row = compile_report(exp, topology_devices(flags_.topology), flags_.topology)
  except (LibtpuMissing, ValueError) as e:
    sys.exit(f"aot_compile.py: {e}")
  row["config"] = name
  row["versions"] = library_versions()
  for dist in ("libtpu", "jax-cuda12-pjrt"):
    try:
      row["versions"][dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      pass
  print(json.dumps(row, indent=1))
  print(MARKDOWN_HEADER)
  print(markdown_row(name, row))
  if flags_.json:
    with open(flags_.json, "a") as f:
      f.write(json.dumps(row) + "\n")
  if flags_.markdown:
    with open(flags_.markdown, "a") as f:
      f.write(markdown_row(name, row) + "\n")


def define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/ucf101.py[:tiny].",
                                  lock_config=True)
  flags.DEFINE_string("topology", "cpu", "v5p-8, v5e-16, v4-32, v6e-8 ..., a libtpu name "
                      "(v5e:4x4), h100-8 (CUDA plugin) or cpu (this machine's devices).")
  flags.DEFINE_string("json", "", "Append the report as one JSON line to this file.")
  flags.DEFINE_string("markdown", "", "Append the report as one markdown table row to this file.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only TPU devices; no TPU backend to start
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from absl import app
  define_flags()
  app.run(main)
