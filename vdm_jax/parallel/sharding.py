"""Parameter and batch shardings from logical axis names; host batches -> global arrays.

Imports no model code: vdm_jax.model.build creates the model with these shardings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vdm_jax.parallel.logical import DEFAULT_RULES, Rules, logical_to_spec


def _variable_spec(variable: Any, mesh: Mesh, rules: Rules) -> PartitionSpec:
  axes = variable.get_metadata().get("logical_axes") if hasattr(variable, "get_metadata") else None
  shape = getattr(variable, "shape", ())
  if not axes or len(axes) != len(shape):
    return PartitionSpec()
  return logical_to_spec(axes, shape, dict(mesh.shape), rules)


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """NamedSharding for every leaf of an nnx.State (abstract or concrete).

  Variables with `logical_axes` metadata are sharded by `rules`; a dimension that does not divide
  by its mesh axes is replicated; everything else (rng keys, counters) is replicated.
  Returns a pytree with the structure of `abstract_state` (Variables keep their metadata).
  """
  def leaf(v):
    return NamedSharding(mesh, _variable_spec(v, mesh, rules))

  is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
  return jax.tree.map(
      lambda x: x.replace(leaf(x)) if is_var(x) else NamedSharding(mesh, PartitionSpec()),
      abstract_state, is_leaf=is_var)


def num_batch_devices(mesh_shape: Mapping[str, int]) -> int:
  """Devices the batch axis is split over: data x fsdp of a mesh's (filled) shape."""
  return int(mesh_shape.get("data", 1)) * int(mesh_shape.get("fsdp", 1))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits axis 0 over ('data', 'fsdp'); other axes replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded over the batch axis.

  Raises:
    ValueError: if a leading dimension does not divide over this process's share of the batch axis.
  """
  sharding = batch_sharding(mesh)
  batch_devices = num_batch_devices(mesh.shape)
  local_share = max(batch_devices // jax.process_count(), 1)
  out = {}
  for name, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] % local_share:
      raise ValueError(
          f"batch[{name!r}] has {value.shape[0] if value.ndim else 0} rows on this process, which "
          f"do not divide over its {local_share} batch shards (data x fsdp = {batch_devices}); "
          "change the per-process batch size.")
    global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
    out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out
