"""The train state: params, EMA params, optimizer state, step and rng, created already sharded."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vdm_jax.model import ModelConfig, abstract_model, create_model, split_params

# The train state is a plain dict pytree (what Orbax saves):
#   step int32 [], rng uint32 [2] (key data), params / ema (nnx.State of Params), opt_state.
TrainState = dict[str, Any]


def create_train_state(model_config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                       seed: int) -> tuple[nnx.GraphDef, nnx.State, TrainState]:
  """Creates the model sharded over `mesh` (never whole on one device) and the state around it.

  Returns:
    graphdef: the model's structure; rest: its non-trainable variables; state: the TrainState.
  """
  graphdef, model_state = create_model(model_config, mesh, seed)
  params, rest = split_params(model_state)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_shardings = _opt_state_shardings(tx, params, param_shardings, replicated)
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


def _opt_state_shardings(tx: optax.GradientTransformation, params: Any, param_shardings: Any,
                         replicated: NamedSharding) -> Any:
  """Optimizer moments are sharded like their parameters (FSDP shards them too); counters replicate."""
  return optax.tree_map_params(
      tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, params), param_shardings,
      transform_non_params=lambda _: replicated)


def abstract_train_state(model_config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                         seed: int = 0) -> tuple[nnx.GraphDef, nnx.State, TrainState]:
  """create_train_state's structure as jax.ShapeDtypeStructs carrying their shardings on `mesh`.

  Nothing is allocated or compiled, so `mesh` may hold compile-only devices (a TPU topology from
  jax.experimental.topologies): the state and `rest` are what jax.jit(...).lower() takes to compile
  the train step ahead of time for hardware this machine does not have.

  Returns:
    graphdef; rest: the model's non-trainable variables (rng streams), abstract and replicated, to
    pass to the step as an argument; state: the abstract TrainState.
  """
  graphdef, params, concrete_rest = abstract_model(model_config, mesh, seed)
  replicated = NamedSharding(mesh, PartitionSpec())
  as_abstract = lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  opt_state = jax.tree.map(as_abstract, jax.eval_shape(tx.init, params),
                           _opt_state_shardings(tx, params, param_shardings, replicated))
  state = {
      "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
      "rng": as_abstract(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(seed))), replicated),
      "params": params,
      "ema": params,
      "opt_state": opt_state,
  }
  rest = jax.tree.map(lambda x: as_abstract(x, replicated), concrete_rest)
  return graphdef, rest, state


def state_shardings(state: TrainState) -> Any:
  """The sharding of every leaf of a (concrete) train state."""
  return jax.tree.map(lambda x: x.sharding, state)



def start_from_params(state: TrainState, params: Any) -> TrainState:
  """A fresh state whose params and EMA are copies of `params` on the state's shardings.

  Copies, since the state is donated to the step (a distillation student starts from its teacher,
  an inflated video model from an image model).
  """
  shardings = jax.tree.map(lambda x: x.sharding, state["params"])
  copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)
  return {**state, "params": copy(params), "ema": copy(params)}
