"""Device mesh with axes ('data', 'fsdp', 'tensor'), compiler-partitioned (AxisType.Auto)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np

from vdm_jax.parallel.logical import MESH_AXES


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices).

  Exactly one of the sizes may be -1: it takes the devices the others leave.

  Raises:
    ValueError: if more than one size is -1, a size is < 1, or the product differs from the
      device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = [data, fsdp, tensor]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}.")
  if any(s < 1 and s != -1 for s in sizes):
    raise ValueError(f"Mesh sizes must be >= 1 or -1, got data={data} fsdp={fsdp} tensor={tensor}.")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if n % rest:
      raise ValueError(f"{n} devices do not divide by the fixed mesh axes (product {rest}); "
                       f"got data={data} fsdp={fsdp} tensor={tensor}.")
    sizes[sizes.index(-1)] = n // rest
  if math.prod(sizes) != n:
    raise ValueError(f"Mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
                     f"{math.prod(sizes)} does not match the {n} devices; set one axis to -1.")
  auto = (jax.sharding.AxisType.Auto,) * 3
  if devices == list(jax.devices()):
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto)
  return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=auto)
