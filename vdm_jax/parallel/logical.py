"""Logical axis names -> mesh axes: the one rules table, and activation constraints.

Parameters carry logical axis names in their `logical_axes` metadata; activations are constrained
by logical names with `constrain`. The rules table maps each name to a mesh axis, a tuple of mesh
axes, or None (replicated), so FSDP and tensor parallelism are choices of mesh shape, not code.
This module imports no model code (the model imports it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import jax
from jax.sharding import PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: Rules = {
    # activations
    "batch": ("data", "fsdp"),
    "time": None,
    "height": None,
    "width": None,
    "channels": None,
    "length": None,
    "act_heads": "tensor",
    "act_mlp": "tensor",  # the hidden units of a transformer MLP
    # parameters
    "embed": "fsdp",      # input features of dense layers and convs
    "mlp": "tensor",      # output features of dense layers and convs
    "heads": "tensor",    # attention heads (qkv outputs, out-projection inputs)
    "kv": None,           # per-head features
    "conv_h": None,
    "conv_w": None,
    "norm": None,         # GroupNorm scale / bias
    "vocab": None,        # class embedding rows
    "buckets": None,      # relative-position buckets
    "patch": None,        # tubelet features of the DiT's patch embedding / unpatchify projection
    "position": None,     # rows of learned position tables
}

_RULES_STACK: list[Rules] = []


@contextlib.contextmanager
def logical_rules(rules: Rules) -> Iterator[None]:
  """Uses `rules` instead of DEFAULT_RULES for activation constraints inside the block."""
  _RULES_STACK.append(rules)
  try:
    yield
  finally:
    _RULES_STACK.pop()


def current_rules() -> Rules:
  return _RULES_STACK[-1] if _RULES_STACK else DEFAULT_RULES


def _axis_size(mesh_shape: Mapping[str, int], axes: MeshAxes) -> int:
  if axes is None:
    return 1
  names = (axes,) if isinstance(axes, str) else axes
  size = 1
  for name in names:
    size *= mesh_shape.get(name, 1)
  return size


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                    mesh_shape: Mapping[str, int], rules: Rules | None = None) -> PartitionSpec:
  """PartitionSpec for an array of `shape` with these logical axis names.

  A dimension is replicated where its name maps to None, where it does not divide by the mesh
  axes' size, or where a mesh axis was already used by an earlier dimension.
  """
  rules = current_rules() if rules is None else rules
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    axes = rules.get(name) if name is not None else None
    if axes is not None:
      names = (axes,) if isinstance(axes, str) else tuple(axes)
      names = tuple(a for a in names if a in mesh_shape and a not in used)
      axes = (names[0] if len(names) == 1 else names) if names else None
    if axes is None or dim % _axis_size(mesh_shape, axes):
      spec.append(None)
      continue
    used.update((axes,) if isinstance(axes, str) else axes)
    spec.append(axes)
  return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op when no mesh is set (jax.set_mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size == 1:
    return x
  spec = logical_to_spec(logical_axes, x.shape, dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, spec)
