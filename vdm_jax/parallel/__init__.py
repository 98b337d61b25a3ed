"""Meshes, the logical-axis rules table, sharded model creation, host batch -> global arrays."""

from vdm_jax.parallel.logical import DEFAULT_RULES, constrain, logical_rules, logical_to_spec
from vdm_jax.parallel.mesh import make_mesh
from vdm_jax.parallel.sharding import (batch_sharding, create_sharded_model, host_to_global,
                                       state_shardings)

__all__ = ["DEFAULT_RULES", "batch_sharding", "constrain", "create_sharded_model",
           "host_to_global", "logical_rules", "logical_to_spec", "make_mesh", "state_shardings"]
