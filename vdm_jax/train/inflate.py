"""Image-first training (Make-A-Video, Video LDM): start a video model from an image model.

`train.init_from` names a finished run (typically trained with model.temporal_attention="none", an
image model applied to every frame); a fresh run copies its EMA parameters into every parameter the
two models share and keeps its own initialisation for the rest: the temporal attention layers,
whose zero-initialised output projection makes each one the identity, so the inflated video model
starts as exactly the image model. `optim.trainable="temporal"` then trains only the temporal
layers (the spatial ones frozen: their gradients and updates are zeroed), or "all" fine-tunes
everything.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from vdm_jax import checkpoints
from vdm_jax.config import ConfigError, ExperimentConfig
from vdm_jax.model import abstract_model
from vdm_jax.train.optimizer import TEMPORAL_KEY, trainable_mask
from vdm_jax.train.state import TrainState, start_from_params


def _flat(tree: Any) -> dict[str, Any]:
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_trainable(params: Any, trainable: str) -> None:
  """ConfigError when `trainable` would freeze every parameter (a model without temporal layers)."""
  if trainable != "all" and not any(jax.tree.leaves(trainable_mask(params, trainable))):
    raise ConfigError(f"optim.trainable={trainable!r} but the model has no parameters under "
                      f"'{TEMPORAL_KEY}' (set model.temporal_attention, or optim.trainable='all'; "
                      "the DiT's temporal layers are not split out yet)")


def copy_shared(source: Any, params: Any) -> tuple[Any, int]:
  """params with every leaf that `source` also has (same path) replaced by source's value.

  Returns:
    (params, number of leaves copied).

  Raises:
    ConfigError: source has a parameter params lacks, or one of another shape.
  """
  src, own = _flat(source), _flat(params)
  missing = sorted(set(src) - set(own))
  shapes = sorted(k for k in set(src) & set(own) if src[k].shape != own[k].shape)
  if missing or shapes:
    raise ConfigError(f"{len(missing)} parameters this model lacks (e.g. {missing[:2]}) and "
                      f"{len(shapes)} of another shape (e.g. {shapes[:2]}): the source model is "
                      "not this one minus layers; start from a run whose model differs only in "
                      "temporal_attention")

  def take(path, leaf):
    key = jax.tree_util.keystr(path)
    return src[key].astype(leaf.dtype) if key in src else leaf

  return jax.tree_util.tree_map_with_path(take, params), len(src)


def init_from(exp: ExperimentConfig, state: TrainState, mesh: Any) -> tuple[TrainState, dict]:
  """A fresh state whose params and EMA take the shared parameters of run `exp.train.init_from`.

  Returns:
    (state, a record: source workdir and step, copied and new parameter counts).

  Raises:
    ConfigError: see copy_shared (the message names train.init_from).
  """
  source = exp.train.init_from
  src_exp, step, _ = checkpoints.read_experiment(source)
  _, target, _ = abstract_model(src_exp.model, mesh)
  restored = checkpoints.restore_params(source, step, target, use_ema=True)
  try:
    params, copied = copy_shared(restored, state["params"])
  except ConfigError as err:
    raise ConfigError(f"train.init_from={source}: {err}") from err
  entry = {"workdir": os.path.abspath(source), "step": int(step), "copied": copied,
           "new": len(jax.tree.leaves(params)) - copied}
  return start_from_params(state, params), entry
