"""The optimizer (optax) and the EMA of parameters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from vdm_jax.config import OptimConfig

TEMPORAL_KEY = "temporal"  # the U-Net's temporal attention modules live under this attribute name


def learning_rate_schedule(config: OptimConfig, num_steps: int) -> optax.Schedule:
  """Linear warmup to config.learning_rate, then constant or cosine decay to 0 at num_steps."""
  warmup = max(config.warmup_steps, 0)
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 1),
                                              max(num_steps, warmup + 1), end_value=0.0)
  if warmup == 0:
    return optax.constant_schedule(config.learning_rate)
  return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup),
                               optax.constant_schedule(config.learning_rate)], [warmup])


def make_optimizer(config: OptimConfig, num_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping, then Adam or AdamW on the learning-rate schedule; `trainable` freezes."""
  lr = learning_rate_schedule(config, num_steps)
  if config.optimizer == "adamw":
    opt = optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                      weight_decay=config.weight_decay)
  else:
    opt = optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return freeze(opt, config.trainable)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay with warmup, min(decay, (1 + step) / (10 + step)): short runs get a usable EMA."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay: jax.Array):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)


def trainable_mask(params: Any, trainable: str) -> Any:
  """A bool per parameter leaf: True where `trainable` ("all" or "temporal") lets it change."""
  def keep(path, _):
    return trainable == "all" or TEMPORAL_KEY in jax.tree_util.keystr(path)
  return jax.tree_util.tree_map_with_path(keep, params)


def freeze(tx: optax.GradientTransformation, trainable: str) -> optax.GradientTransformation:
  """tx with the gradients and the updates of frozen parameters zeroed (stateless: no new state).

  Zeroing before tx keeps frozen gradients out of clipping and Adam's moments; zeroing after keeps
  AdamW's weight decay off the frozen parameters.
  """
  if trainable == "all":
    return tx

  def zero_frozen(updates, state, params=None):
    mask = trainable_mask(updates, trainable)
    return jax.tree.map(lambda u, m: u if m else jnp.zeros_like(u), updates, mask), state

  mask_tx = optax.GradientTransformation(lambda _: optax.EmptyState(), zero_frozen)
  return optax.chain(mask_tx, tx, mask_tx)
