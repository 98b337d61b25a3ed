"""Progressive distillation (Salimans & Ho 2022, "PD"; docs/MATH.md section 8): its settings and loss.

A student for N sampling steps learns to match two deterministic DDIM steps of its teacher (on the
teacher's 2N-step grid) with one of its own. For a student step t = i / N -> s = (i - 1) / N:

    z_t = alpha_t x + sigma_t eps,   teacher: z_t -> z_{t - 1/(2N)} -> z_s   (DDIM, eta 0)
    x_tilde = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)

the x for which one DDIM step of the student from z_t lands on z_s. On the last step (s = 0) the
samplers return x_hat instead of stepping to lambda_max, so there x_tilde is the teacher's x_hat at
the half step: what the teacher's sampler returns. The student's x_hat is regressed on x_tilde with
PD's truncated-SNR weight max(SNR_t, 1) on the x error, computed (as in losses.py) as the error in the
network's own output space (x_tilde converted to a v target for v-prediction) times
w(lambda) / w_own(lambda).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion.losses import log_weight, masked_mean
from vdm_jax.diffusion.protocols import DenoiseFn
from vdm_jax.diffusion.samplers import make_predict_fn
from vdm_jax.diffusion.schedule import CosineSchedule, alpha_sigma

WEIGHTING = "truncated_snr"  # PD's 'truncated SNR' loss: max(SNR, 1) on the x error


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """The `distill` config section: this run trains a progressive-distillation student.

  With `teacher_workdir` set, the trainer starts the student from the teacher's EMA parameters
  (vdm_jax/train/distill.py) and trains it with `distillation_loss`; the student then samples with
  `student_steps` DDIM steps (eta 0), its teacher with twice as many. The teacher must have the same
  model and diffusion sections; a distilled teacher must be for 2 x student_steps.
  Classifier-free guidance: the conditional and the unconditional (null class, dropped frames)
  model are distilled together (the teacher gets the student's conditioning, dropout included), and
  the student is guided when it samples; a guided (fixed-w) teacher is not distilled.

  Attributes:
    teacher_workdir: the teacher's workdir; None (or "") trains an ordinary model.
    teacher_step: the teacher's checkpoint; -1 = its newest intact one (a resumed round keeps the
      step it started from, which its manifest records).
    student_steps: N, the sampling steps the student is for.
  """
  teacher_workdir: str | None = None
  teacher_step: int = -1
  student_steps: int = 0

  def __post_init__(self):
    if not self.teacher_step >= -1:
      raise ValueError(f"distill.teacher_step={self.teacher_step} is out of range: it must be >= -1 "
                       "(-1: the newest); change --config.distill.teacher_step")
    if self.teacher_workdir and not self.student_steps >= 1:
      raise ValueError(f"distill.student_steps={self.student_steps} is out of range: a student of "
                       f"{self.teacher_workdir} needs the sampling steps it is for (>= 1; its "
                       "teacher samples with twice as many); change --config.distill.student_steps")

  @property
  def enabled(self) -> bool:
    return bool(self.teacher_workdir)


def _ddim_to(x_hat: jax.Array, eps_hat: jax.Array, logsnr_s: jax.Array) -> jax.Array:
  """DDIM (eta 0) to per-example log-SNR [B]: z_s = alpha_s x_hat + sigma_s eps_hat."""
  alpha_s, sigma_s = alpha_sigma(logsnr_s)
  return param.broadcast_to(alpha_s, x_hat) * x_hat + param.broadcast_to(sigma_s, x_hat) * eps_hat


def teacher_target(teacher_fn: DenoiseFn, z_t: jax.Array, times: jax.Array, num_steps: int,
                   cond: Any = None, *, schedule: CosineSchedule = CosineSchedule(),
                   prediction: str = "v", clip_x: bool = True) -> jax.Array:
  """x_tilde [B, ...]: the x of one DDIM step from z_t (at times t [B]) to t - 1/N that the teacher
  reaches in two, t -> t - 1/(2N) -> t - 1/N (x_hat at the half step when t = 1/N; module docstring).

  clip_x: clip the teacher's x_hat as its sampler does.
  """
  logsnr_t = schedule.logsnr(times)
  logsnr_mid = schedule.logsnr(times - 0.5 / num_steps)
  logsnr_s = schedule.logsnr(times - 1.0 / num_steps)
  predict_fn = make_predict_fn(teacher_fn, cond, prediction=prediction, clip_x=clip_x)
  z_mid = _ddim_to(*predict_fn(z_t, logsnr_t), logsnr_mid)
  x_mid, eps_mid = predict_fn(z_mid, logsnr_mid)
  z_s = _ddim_to(x_mid, eps_mid, logsnr_s)
  alpha_t, sigma_t = alpha_sigma(logsnr_t)
  alpha_s, sigma_s = alpha_sigma(logsnr_s)
  ratio = sigma_s / sigma_t
  x_tilde = ((z_s - param.broadcast_to(ratio, z_t) * z_t)
             / param.broadcast_to(alpha_s - ratio * alpha_t, z_t))
  last = param.broadcast_to(times <= 1.0 / num_steps, z_t)
  return jax.lax.stop_gradient(jnp.where(last, x_mid, x_tilde))


def distillation_loss(student_fn: DenoiseFn, teacher_fn: DenoiseFn, x: jax.Array, rng: jax.Array,
                      cond: Any = None, *, num_steps: int, schedule: CosineSchedule = CosineSchedule(),
                      prediction: str = "v", clip_x: bool = True,
                      frame_mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-example PD loss [B] of a student for `num_steps` sampling steps, and metrics.

  Args:
    student_fn, teacher_fn: (z, logsnr [B], cond) -> prediction of kind `prediction`.
    x: clean data [B, T, H, W, C] in [-1, 1].
    rng: PRNG key (the student's step i ~ U{1..N} and the noise).
    cond: the conditioning both networks get.
    num_steps: N, the student's sampling steps (the teacher's are 2N).
    schedule, prediction: the diffusion process.
    clip_x: clip the teacher's x_hat (as the sampler does).
    frame_mask: optional [B, T], 1 where a frame counts (0 for known, conditioning frames).

  Returns:
    loss [B] and {"logsnr", "mse" (own space), "x_mse" (student x_hat vs x_tilde)}, each [B].
  """
  rng_t, rng_eps = jax.random.split(rng)
  batch = x.shape[0]
  times = jax.random.randint(rng_t, (batch,), 1, num_steps + 1).astype(jnp.float32) / num_steps
  logsnr = schedule.logsnr(times)
  alpha, sigma = alpha_sigma(logsnr)
  x = x.astype(jnp.float32)
  eps = jax.random.normal(rng_eps, x.shape, jnp.float32)
  z = param.broadcast_to(alpha, x) * x + param.broadcast_to(sigma, x) * eps
  x_tilde = teacher_target(teacher_fn, z, times, num_steps, cond, schedule=schedule,
                           prediction=prediction, clip_x=clip_x)
  target = param.target_for(x_tilde, param.eps_from_x(z, x_tilde, alpha, sigma), alpha, sigma,
                            prediction)
  pred = student_fn(z, logsnr, cond).astype(jnp.float32)
  mse = masked_mean(jnp.square(pred - target), frame_mask)
  loss = jnp.exp(log_weight(logsnr, WEIGHTING) - log_weight(logsnr, prediction)) * mse
  x_hat, _ = param.to_x_eps(pred, z, alpha, sigma, prediction)
  return loss, {"logsnr": logsnr, "mse": mse,
                "x_mse": masked_mean(jnp.square(x_hat - x_tilde), frame_mask)}
