"""The train state: params, EMA params, optimizer state, step and rng, created already sharded."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vdm_jax.model import UNetConfig, create_model, split_params

# The train state is a plain dict pytree (what Orbax saves):
#   step int32 [], rng uint32 [2] (key data), params / ema (nnx.State of Params), opt_state.
TrainState = dict[str, Any]


def create_train_state(model_config: UNetConfig, tx: optax.GradientTransformation, mesh: Mesh,
                       seed: int) -> tuple[nnx.GraphDef, nnx.State, TrainState]:
  """Creates the model sharded over `mesh` (never whole on one device) and the state around it.

  Returns:
    graphdef: the model's structure; rest: its non-trainable variables; state: the TrainState.
  """
  graphdef, model_state = create_model(model_config, mesh, seed)
  params, rest = split_params(model_state)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  replicated = NamedSharding(mesh, PartitionSpec())

  # Optimizer moments are sharded like their parameters (FSDP shards them too); counters replicate.
  opt_shardings = optax.tree_map_params(
      tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, params), param_shardings,
      transform_non_params=lambda _: replicated)
  init_rest = jax.jit(lambda p: {"ema": jax.tree.map(jnp.copy, p), "opt_state": tx.init(p)},
                      out_shardings={"ema": param_shardings, "opt_state": opt_shardings})
  extra = init_rest(params)
  state = {
      "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
      "rng": jax.device_put(jax.random.key_data(jax.random.key(seed + 1)), replicated),
      "params": params,
      "ema": extra["ema"],
      "opt_state": extra["opt_state"],
  }
  return graphdef, rest, state


def state_shardings(state: TrainState) -> Any:
  """The sharding of every leaf of a (concrete) train state."""
  return jax.tree.map(lambda x: x.sharding, state)

