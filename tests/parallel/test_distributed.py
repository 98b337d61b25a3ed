"""--cpu_devices=-1: one CPU device per core, fitted to the config's mesh and batch."""

import pytest

from vdm_jax.parallel import distributed
from vdm_jax.parallel.distributed import cpu_devices_per_core


@pytest.mark.parametrize("batch, mesh, cores, expected", [
    (8, None, 2, 2),                                        # the default config on 2 cores
    (8, {"data": -1, "fsdp": 1, "tensor": 1}, 16, 8),       # no more devices than the batch takes
    (6, None, 4, 3),                                        # lowered to a divisor of the batch
    (5, None, 2, 1),                                        # a prime batch: one device
    (0, None, 6, 6),                                        # no batch to fit (sample.py pads)
    (8, {"data": -1, "fsdp": 2, "tensor": 1}, 4, 4),        # data 2 x fsdp 2
    (8, {"data": -1, "fsdp": 2, "tensor": 1}, 3, 2),        # the fixed fsdp=2 must divide
    (8, {"data": -1, "fsdp": 1, "tensor": 2}, 4, 4),        # tensor 2 takes no batch rows
    (8, {"data": 1, "fsdp": 4, "tensor": 1}, 2, 4),         # a fully fixed mesh gets its size
])
def test_cpu_devices_per_core(batch, mesh, cores, expected):
  assert cpu_devices_per_core(batch, mesh, cores=cores) == expected


def test_explicit_counts_and_user_flags_win(monkeypatch):
  monkeypatch.setattr(distributed, "_accelerator_expected", lambda: False)
  monkeypatch.setattr(distributed, "cpu_cores", lambda: 2)
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  assert distributed.resolve_cpu_devices(-1, 8, None) == 2
  assert distributed.resolve_cpu_devices(3, 8, None) == 3   # --cpu_devices=3
  assert distributed.resolve_cpu_devices(0, 8, None) == 0   # JAX's default
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  assert distributed.resolve_cpu_devices(-1, 8, None) == 0  # the user's XLA_FLAGS stand
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(distributed, "_accelerator_expected", lambda: True)
  assert distributed.resolve_cpu_devices(-1, 8, None) == 0  # GPU/TPU runs leave the CPU client


def test_accelerator_expected_follows_jax_platforms(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not distributed._accelerator_expected()
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert distributed._accelerator_expected()


def test_initialize_gives_one_device_per_core_in_a_fresh_process():
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=root)
  code = ("import jax; from vdm_jax.parallel import distributed as d; "
          "d.initialize(cpu_devices=-1, batch_size=8); "
          "print(jax.device_count(), d.cpu_devices_per_core(8))")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  assert out[0] == out[1] and int(out[0]) >= 1
