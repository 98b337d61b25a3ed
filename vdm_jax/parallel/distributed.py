"""Multi-host start-up through jax.distributed (JAX's multi-controller runtime).

Every host runs the same command. On TPU pods and SLURM clusters jax.distributed.initialize()
detects the coordinator, process count and id by itself (--distributed); elsewhere pass them.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

from vdm_jax.parallel.sharding import num_batch_devices

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("VDM_COORDINATOR_ADDRESS"),
    "host:port of process 0 for jax.distributed (env VDM_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ.get("VDM_NUM_PROCESSES", "0")) or None,
    "Number of processes (hosts) for jax.distributed (env VDM_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", int(os.environ["VDM_PROCESS_ID"]) if "VDM_PROCESS_ID" in os.environ else None,
    "This process's id in [0, num_processes) (env VDM_PROCESS_ID).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", -1,
    "CPU devices per process when running on the CPU: -1 (default) one per core, so the batch is "
    "split data-parallel over the cores (1.2-1.6x faster train steps than one device using all "
    "cores, benchmarks/RESULTS.md); N forces N (testing meshes on one machine); 0 JAX's default.")

DISTRIBUTED_FLAGS = (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID, _DISTRIBUTED, _CPU_DEVICES)


def cpu_cores() -> int:
  """The cores this process may run on (its affinity mask), else the machine's count."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def _accelerator_expected() -> bool:
  """True if JAX will pick a GPU/TPU backend (a plugin is installed and JAX_PLATFORMS allows it)."""
  platforms = os.environ.get("JAX_PLATFORMS", "") or (jax.config.jax_platforms or "")
  if platforms:
    return any(p.strip() not in ("", "cpu") for p in platforms.split(","))
  import importlib.util

  def installed(module: str) -> bool:
    try:
      return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
      return False

  return any(installed(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                                    "jax_rocm7_plugin", "libtpu"))


def cpu_devices_per_core(batch_size: int = 0, mesh: dict | None = None,
                         cores: int | None = None) -> int:
  """How many CPU devices to run: one per core, lowered until the mesh and the batch fit.

  XLA CPU runs one device's ops over all cores with little overlap between them; a data-parallel
  mesh of one device per core keeps every core busy (the batch is split, the gradients are
  all-reduced in memory). `mesh` is the config's {data, fsdp, tensor} (one may be -1): with no -1
  the count is their product; otherwise the largest n <= cores that the fixed sizes divide and
  over whose batch axes (data x fsdp) the per-process `batch_size` divides (0: no batch check).
  """
  cores = cores or cpu_cores()
  mesh = dict(mesh or {"data": -1, "fsdp": 1, "tensor": 1})
  fixed = 1
  for v in mesh.values():
    fixed *= v if v > 0 else 1
  if -1 not in mesh.values():
    return fixed
  for n in range(max(cores, fixed), 0, -1):
    if n % fixed:
      continue
    filled = {k: (n // fixed if v == -1 else v) for k, v in mesh.items()}
    if batch_size and batch_size % num_batch_devices(filled):
      continue
    return n
  return fixed


def resolve_cpu_devices(requested: int, batch_size: int, mesh: dict | None) -> int:
  """The jax_num_cpu_devices to set (0: leave JAX's default) for --cpu_devices=requested."""
  if requested >= 0:
    return requested
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or "JAX_NUM_CPU_DEVICES" in os.environ or _accelerator_expected()):
    return 0  # the user chose, or the run is on an accelerator: leave the CPU client alone
  return cpu_devices_per_core(batch_size, mesh)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False, cpu_devices: int = 0,
               batch_size: int = 0, mesh: dict | None = None) -> None:
  """Starts jax.distributed when asked; must run before any other JAX call touches devices.

  cpu_devices: N > 0 forces N CPU devices per process; -1 one per core (on a CPU-only run, unless
  XLA_FLAGS or JAX_NUM_CPU_DEVICES already say), fitted to the config's `mesh` and per-process
  `batch_size` (cpu_devices_per_core); 0 leaves JAX's default.
  """
  n_cpu = resolve_cpu_devices(cpu_devices, batch_size, mesh)
  if n_cpu:
    jax.config.update("jax_num_cpu_devices", n_cpu)
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif auto:
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def initialize_from_flags(global_batch_size: int = 0, mesh: dict | None = None) -> None:
  """initialize() from the command-line flags; the batch and mesh bound --cpu_devices=-1."""
  processes = _NUM_PROCESSES.value or 1
  batch = global_batch_size // processes if global_batch_size % processes == 0 else 0
  initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
             auto=_DISTRIBUTED.value, cpu_devices=_CPU_DEVICES.value, batch_size=batch, mesh=mesh)
