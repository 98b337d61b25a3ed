"""Progressive distillation's loss (diffusion/distillation.py) on a linear toy: the teacher's v is
c(lambda) z, the student's a[k] z with one free coefficient per student grid time k, so the exact
optimum is reachable: the loss must reach ~0 and the student's N DDIM steps equal the teacher's 2N."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdm_jax.diffusion import distillation as dist
from vdm_jax.diffusion import samplers as smp
from vdm_jax.diffusion.schedule import CosineSchedule, alpha_sigma

N = 4
SCHEDULE = CosineSchedule()
SHAPE = (64, 2, 2, 2, 1)


def teacher_fn(z, logsnr, cond):
  c = 0.3 + 0.2 * jnp.tanh(logsnr / 5.0)
  return c.reshape(-1, 1, 1, 1, 1) * z


def student_fn_of(a):
  def student_fn(z, logsnr, cond):
    k = jnp.round(SCHEDULE.time_from_logsnr(logsnr) * N).astype(jnp.int32)
    return a[k].reshape(-1, 1, 1, 1, 1) * z
  return student_fn


def _loss(a, rng, x):
  loss, aux = dist.distillation_loss(student_fn_of(a), teacher_fn, x, rng, num_steps=N,
                                     schedule=SCHEDULE, clip_x=False)
  return jnp.mean(loss), aux


def _ddim(denoise_fn, z, n):
  cfg = smp.SamplerConfig("ddim", num_steps=n, clip_x=False)
  predict_fn = smp.make_predict_fn(denoise_fn, None, clip_x=False)
  return smp.sample_loop(predict_fn, z, jax.random.key(0), schedule=SCHEDULE, config=cfg)


def test_student_learns_the_teachers_two_step_map():
  x = jax.random.uniform(jax.random.key(0), SHAPE, minval=-1, maxval=1)
  tx = optax.adam(0.05)

  @jax.jit
  def train(a, opt_state, rng):
    def step(carry, key):
      a, opt_state = carry
      (loss, _), grads = jax.value_and_grad(_loss, has_aux=True)(a, key, x)
      updates, opt_state = tx.update(grads, opt_state)
      return (optax.apply_updates(a, updates), opt_state), loss
    (a, opt_state), losses = jax.lax.scan(step, (a, opt_state), jax.random.split(rng, 600))
    return a, opt_state, losses

  a = jnp.full((N + 1,), 0.3)  # the student starts near the teacher, as PD's does
  a, _, losses = train(a, tx.init(a), jax.random.key(1))
  first, final = float(losses[:10].mean()), float(_loss(a, jax.random.key(2), x)[0])
  assert first > 1e-3 and final < 1e-9, (first, final)
  # The student's N steps reproduce the teacher's 2N-step DDIM samples from any noise.
  z = jax.random.normal(jax.random.key(3), SHAPE)
  np.testing.assert_allclose(_ddim(student_fn_of(a), z, N), _ddim(teacher_fn, z, 2 * N), atol=1e-4)
  # ... and are not trivially equal: the teacher at N steps differs.
  assert np.abs(_ddim(teacher_fn, z, N) - _ddim(teacher_fn, z, 2 * N)).max() > 1e-2


def test_target_inverts_one_ddim_step():
  # x_tilde is the x for which one DDIM step t -> s from z_t lands on the teacher's two-step z_s.
  z = jax.random.normal(jax.random.key(4), SHAPE)
  times = jnp.full((SHAPE[0],), 3.0 / N)
  x_tilde = dist.teacher_target(teacher_fn, z, times, N, schedule=SCHEDULE, clip_x=False)
  lam_t, lam_s = smp.step_logsnrs(SCHEDULE, N, 2)
  alpha_t, sigma_t = alpha_sigma(lam_t)
  one_step = smp.ddim_update(z, x_tilde, (z - alpha_t * x_tilde) / sigma_t, lam_t, lam_s)
  teacher = smp.make_predict_fn(teacher_fn, None, clip_x=False)
  two_steps = smp.sample_loop(teacher, z, jax.random.key(0), schedule=SCHEDULE,
                              config=smp.SamplerConfig(num_steps=2 * N, clip_x=False), start=2, stop=4)
  np.testing.assert_allclose(one_step, two_steps, atol=1e-5)
  # On the last step (t = 1/N) the target is the teacher's x_hat at the half step 1/(2N).
  last = dist.teacher_target(teacher_fn, z, jnp.full((SHAPE[0],), 1.0 / N), N, schedule=SCHEDULE,
                             clip_x=False)
  np.testing.assert_allclose(last, smp.sample_loop(teacher, z, jax.random.key(0), schedule=SCHEDULE,
                                                   config=smp.SamplerConfig(num_steps=2 * N, clip_x=False),
                                                   start=2 * N - 2, stop=2 * N), atol=1e-5)


def test_config_checks():
  assert not dist.DistillConfig().enabled
  assert dist.DistillConfig("/teacher", student_steps=4).enabled
  with pytest.raises(ValueError, match="distill.student_steps"):
    dist.DistillConfig("/teacher")
  with pytest.raises(ValueError, match="distill.teacher_step"):
    dist.DistillConfig("/teacher", teacher_step=-2, student_steps=4)
