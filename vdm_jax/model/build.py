"""Building the backbone (UNet or DiT) on a mesh: abstract (no allocation), created sharded, counted.

The one place the model is instantiated; the trainer, the sampler, benchmarks and tests all call
it. Parameters are created inside jit with out_shardings from their logical axis names, so a model
is never whole on one device.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from vdm_jax.model.config import ModelConfig
from vdm_jax.model.dit import DiT
from vdm_jax.model.unet import UNet
from vdm_jax.parallel import DEFAULT_RULES, Rules, state_shardings


def _module(config: ModelConfig, seed: int | jax.Array) -> nnx.Module:
  """The backbone config.backbone names ("unet" or "dit"), with parameters drawn from `seed`."""
  backbone = DiT if config.backbone == "dit" else UNet
  return backbone(config, rngs=nnx.Rngs(seed))


def split_params(state: nnx.State) -> tuple[nnx.State, nnx.State]:
  """(params, rest): the trainable nnx.Param leaves and everything else (rng stream counters)."""
  params, rest = nnx.split_state(state, nnx.Param, ...)
  return params, rest


def create_model(config: ModelConfig, mesh: Mesh, rng: int | jax.Array,
                 rules: Rules = DEFAULT_RULES) -> tuple[nnx.GraphDef, nnx.State]:
  """Builds the backbone (UNet or DiT) with parameters created sharded (inside jit with out_shardings).

  Args:
    config: the model's hyper-parameters (config.backbone picks the network).
    mesh: a (data, fsdp, tensor) mesh from vdm_jax.parallel.make_mesh.
    rng: int seed or key for nnx.Rngs (one 'default' stream: the parameters' init, then dropout).
    rules: logical axis -> mesh axes.

  Returns:
    (graphdef, state): state leaves are jax.Arrays with NamedShardings from `rules`.
  """
  def init() -> nnx.State:
    return nnx.state(_module(config, rng))

  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: _module(config, rng)))
  shardings = state_shardings(abstract_state, mesh, rules)
  state = jax.jit(init, out_shardings=shardings)()
  return graphdef, state


def abstract_model(config: ModelConfig, mesh: Mesh, seed: int = 0
                   ) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, abstract params with shardings, concrete rest) without allocating parameters.

  The abstract params (jax.ShapeDtypeStruct leaves carrying their NamedShardings on `mesh`) are
  the target to restore a checkpoint's params or EMA onto.
  """
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: _module(config, seed)))
  abstract_params, abstract_rest = split_params(abstract)
  shardings = state_shardings(abstract_params, mesh)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_params, shardings)
  return graphdef, target, _materialize_rest(abstract_rest, seed)


def _materialize_rest(abstract_rest: nnx.State, seed: int) -> nnx.State:
  """Concrete rng-stream variables (keys from `seed`, counts 0) without compiling the model init.

  They only feed dropout, which sampling turns off. Any other non-Param variable is an error,
  since its value would have to come from the checkpoint.
  """
  def leaf(v: Any) -> Any:
    if isinstance(v, nnx.RngKey):
      return v.replace(jnp.broadcast_to(jax.random.key(seed), v.shape))
    if isinstance(v, nnx.RngCount):
      return v.replace(jnp.zeros(v.shape, v.dtype))
    raise ValueError(f"the model holds a non-trainable {type(v).__name__} {v.shape} that sampling "
                     "does not restore; save it in the checkpoint's params")

  return jax.tree.map(leaf, abstract_rest, is_leaf=lambda x: isinstance(x, nnx.Variable))


def count_params(model: ModelConfig | Any) -> int:
  """Number of parameters of a ModelConfig (from shapes only, nothing allocated) or of a params tree."""
  if isinstance(model, ModelConfig):
    return _config_param_count(model)
  return int(sum(x.size for x in jax.tree.leaves(model)))


@functools.lru_cache(maxsize=16)
def _config_param_count(config: ModelConfig) -> int:
  """Cached: validation, the manifest and tests ask for the same frozen config again."""
  abstract = nnx.eval_shape(lambda: _module(config, 0))
  return count_params(nnx.state(abstract, nnx.Param))
