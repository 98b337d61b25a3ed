"""Multi-host start-up through jax.distributed (JAX's multi-controller runtime).

Every host runs the same command. On TPU pods and SLURM clusters jax.distributed.initialize()
detects the coordinator, process count and id by itself (--distributed); elsewhere pass them.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

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
    "cpu_devices", 0, "Force this many CPU devices per process (testing meshes on one machine).")

DISTRIBUTED_FLAGS = (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID, _DISTRIBUTED, _CPU_DEVICES)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False, cpu_devices: int = 0) -> None:
  """Starts jax.distributed when asked; must run before any other JAX call touches devices."""
  if cpu_devices:
    jax.config.update("jax_num_cpu_devices", cpu_devices)
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


def initialize_from_flags() -> None:
  initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
             auto=_DISTRIBUTED.value, cpu_devices=_CPU_DEVICES.value)
