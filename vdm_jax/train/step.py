"""One pure train step: diffusion loss on the U-Net, gradients, optimizer, EMA, non-finite guard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vdm_jax.config import OptimConfig, TrainConfig
from vdm_jax.denoiser import Conditioning, frame_condition, make_denoise_fn
from vdm_jax.diffusion import CosineSchedule, DiffusionConfig, diffusion_loss
from vdm_jax.model import ModelConfig
from vdm_jax.superres import CascadeConfig, training_lowres
from vdm_jax.train.optimizer import ema_decay_at, ema_update
from vdm_jax.train.state import TrainState


def training_condition(batch: dict, rng: jax.Array, model_cfg: ModelConfig, train_cfg: TrainConfig,
                       cascade_cfg: CascadeConfig | None = None
                       ) -> tuple[Conditioning, jax.Array | None]:
  """The model's conditioning for a batch, with dropout for classifier-free guidance.

  A cascade super-resolution stage (model.lowres_channels > 0) is conditioned on its own clip
  degraded and upsampled back (superres.lowres_of), noised at a level drawn per example
  (noise-conditioning augmentation: the conditioning only; the clip to denoise is untouched). The
  lowres conditioning is never dropped; nor are the micro-conditioning values (batch 'fps',
  'motion', for the names in model.micro_conditioning).

  Returns:
    the Conditioning and the loss frame mask [B, T] (None = every frame counts).
  """
  video = batch["video"]
  b, t = video.shape[:2]
  k_cls, k_cond = jax.random.split(rng)
  cond, frame_mask = Conditioning(), None
  if model_cfg.cond_channels:
    known = (jnp.arange(t) < train_cfg.cond_frames)[None, :] & jnp.ones((b, 1), bool)
    keep = ~jax.random.bernoulli(k_cond, train_cfg.cond_dropout, (b, 1))
    cond = frame_condition(video, known & keep)
    frame_mask = 1.0 - (known & keep).astype(jnp.float32)
  if "image_mask" in batch:
    cond = cond.replace(image_mask=batch["image_mask"])
  if model_cfg.lowres_channels:  # its own key: the other models' streams stay as they were
    if cascade_cfg is None or not cascade_cfg.is_stage:
      raise ValueError("model.lowres_channels > 0 needs a cascade section with a factor > 1")
    lowres, aug_level = training_lowres(video, jax.random.fold_in(rng, 2), cascade_cfg)
    cond = cond.replace(lowres=lowres, aug_level=aug_level)
  for name in model_cfg.micro_conditioning:  # the clip's own values (never dropped)
    if name not in batch:
      raise ValueError(f"model.micro_conditioning has {name!r} but the batch has no {name!r}: use a "
                       "dataset that stores it (moving_shapes_speeds, folder/<name>)")
    cond = cond.replace(**{name: batch[name].astype(jnp.float32)})
  if model_cfg.num_classes:
    drop = jax.random.bernoulli(k_cls, train_cfg.class_dropout, (b,))
    labels = jnp.where(drop, model_cfg.num_classes, batch["label"]).astype(jnp.int32)
    cond = cond.replace(labels=labels)
  return cond, frame_mask


def accumulate_grads(grad_fn: Callable, params: Any, batch: dict, rng: jax.Array,
                     accum: int) -> tuple[tuple[jax.Array, jax.Array], Any]:
  """grad_fn(params, batch, rng) -> ((loss, x_mse), grads), averaged over `accum` micro-batches.

  The batch [B, ...] is split into accum micro-batches [B / accum, ...] scanned one after another,
  so activation memory is that of one micro-batch.
  """
  if accum == 1:
    return grad_fn(params, batch, rng)
  micro = jax.tree.map(lambda x: x.reshape((accum, x.shape[0] // accum) + x.shape[1:]), batch)
  zeros = jax.tree.map(jnp.zeros_like, params)

  def body(carry, inputs):
    (loss, x_mse), grads = grad_fn(params, inputs[0], inputs[1])
    acc_loss, acc_mse, acc_grads = carry
    return (acc_loss + loss, acc_mse + x_mse, jax.tree.map(jnp.add, acc_grads, grads)), None

  (loss, x_mse, grads), _ = jax.lax.scan(
      body, (jnp.zeros(()), jnp.zeros(()), zeros), (micro, jax.random.split(rng, accum)))
  return (loss / accum, x_mse / accum), jax.tree.map(lambda g: g / accum, grads)


def make_train_step(graphdef: nnx.GraphDef, rest: nnx.State, tx: optax.GradientTransformation,
                    lr_schedule: optax.Schedule, *, model_cfg: ModelConfig,
                    diffusion_cfg: DiffusionConfig, schedule: CosineSchedule,
                    optim_cfg: OptimConfig, train_cfg: TrainConfig,
                    cascade_cfg: CascadeConfig | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """train_step(state, batch) -> (state, metrics); pure, for jax.jit with donated state.

  batch: video float32 [B, T, H, W, C] in [-1, 1], label int32 [B], image_mask bool [B, T]; fps,
  motion float32 [B] for a micro-conditioned model.
  A step whose loss or gradient is not finite leaves params, EMA and optimizer state unchanged
  (metrics['finite'] is False), so no non-finite value ever enters the state.
  """
  loss_kwargs = diffusion_cfg.loss_kwargs()

  def loss_fn(params, micro, rng):
    k_cond, k_drop, k_loss = jax.random.split(rng, 3)
    cond, frame_mask = training_condition(micro, k_cond, model_cfg, train_cfg, cascade_cfg)
    denoise_fn = make_denoise_fn(graphdef, params, rest, deterministic=model_cfg.dropout == 0,
                                 dropout_rng=k_drop)
    loss, aux = diffusion_loss(denoise_fn, micro["video"], k_loss, cond, schedule=schedule,
                               frame_mask=frame_mask, **loss_kwargs)
    return jnp.mean(loss), jnp.mean(aux["x_mse"])

  return gradient_step(jax.value_and_grad(loss_fn, has_aux=True), tx, lr_schedule, optim_cfg)


def gradient_step(grad_fn: Callable, tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
                  optim_cfg: OptimConfig) -> Callable[..., tuple[TrainState, dict]]:
  """train_step(state, batch, *args) -> (state, metrics) around any loss's gradient; pure.

  The part every train step shares: the step's rng, gradient accumulation, the optimizer, the EMA
  and the non-finite guard (a step whose loss or gradient is not finite leaves params, EMA and
  optimizer state unchanged, metrics['finite'] False).

  Args:
    grad_fn: (params, micro_batch, rng, *args) -> ((loss, x_mse), grads); `args` are the train
      step's extra arguments (e.g. a distillation teacher's parameters), passed through unchanged.
    tx, lr_schedule, optim_cfg: the optimizer, its learning rate and settings (accumulation, EMA).
  """
  accum = optim_cfg.grad_accum_steps

  def train_step(state: TrainState, batch: dict, *args: Any) -> tuple[TrainState, dict]:
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state["rng"]))
    (loss, x_mse), grads = accumulate_grads(lambda p, b, r: grad_fn(p, b, r, *args),
                                            state["params"], batch, step_rng, accum)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = ema_update(state["ema"], params, ema_decay_at(state["step"], optim_cfg.ema_decay))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {
        "step": state["step"] + 1,
        "rng": jax.random.key_data(rng),
        "params": keep(params, state["params"]),
        "ema": keep(ema, state["ema"]),
        "opt_state": keep(opt_state, state["opt_state"]),
    }
    metrics = {"loss": loss, "x_mse": x_mse, "grad_norm": grad_norm,
               "param_norm": optax.global_norm(new_state["params"]),
               "learning_rate": lr_schedule(state["step"]), "finite": finite}
    return new_state, metrics

  return train_step
