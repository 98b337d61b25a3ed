"""Meshes, the logical-axis rules table, shardings, host batch -> global arrays (imports no model)."""

from vdm_jax.parallel.logical import DEFAULT_RULES, Rules, constrain, logical_rules, logical_to_spec
from vdm_jax.parallel.mesh import make_mesh
from vdm_jax.parallel.sharding import batch_sharding, host_to_global, num_batch_devices, state_shardings

__all__ = ["DEFAULT_RULES", "Rules", "batch_sharding", "constrain", "host_to_global",
           "logical_rules", "logical_to_spec", "make_mesh", "num_batch_devices", "state_shardings"]
