"""Classifier-free and reconstruction guidance (docs/MATH.md section 6)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.diffusion import guidance as g
from vdm_jax.diffusion import samplers as smp
from vdm_jax.diffusion.schedule import CosineSchedule, alpha_sigma


def _class_denoiser(z, logsnr, cond):
  # A denoiser whose output depends on the class: label 3 is the null class.
  shift = cond["labels"].astype(jnp.float32).reshape(-1, 1, 1, 1, 1)
  return 0.5 * z + 0.1 * shift


def test_cfg_weight_zero_equals_conditional_model():
  z = jax.random.normal(jax.random.key(0), (4, 3, 2, 2, 1))
  lam = jnp.zeros(4)
  cond = {"labels": jnp.array([0, 1, 2, 1])}
  guided = g.classifier_free_guidance(_class_denoiser, 0.0, {"labels": jnp.full((4,), 3)})
  np.testing.assert_array_equal(guided(z, lam, cond), _class_denoiser(z, lam, cond))


def test_cfg_formula_one_batched_call_and_per_frame_weights():
  calls = []

  def counting(z, logsnr, cond):
    calls.append(z.shape[0])
    return _class_denoiser(z, logsnr, cond)

  z = jax.random.normal(jax.random.key(0), (4, 3, 2, 2, 1))
  lam, cond = jnp.zeros(4), {"labels": jnp.array([0, 1, 2, 1])}
  null = lambda c: {"labels": jnp.full_like(c["labels"], 3)}
  w = g.frame_guidance_weights(1.0, 2.5, 3)
  out = g.classifier_free_guidance(counting, w, null)(z, lam, cond)
  assert calls == [8]  # conditional and unconditional halves in one call
  p_c, p_u = _class_denoiser(z, lam, cond), _class_denoiser(z, lam, null(cond))
  ref = (1 + w.reshape(1, 3, 1, 1, 1)) * p_c - w.reshape(1, 3, 1, 1, 1) * p_u
  np.testing.assert_allclose(out, ref, atol=1e-6)
  with pytest.raises(ValueError, match="per-frame guidance"):
    g.classifier_free_guidance(_class_denoiser, jnp.ones(5), null)(z, lam, cond)


def _tied_frames_predict_fn(num_frames):
  """Exact x_hat for videos whose frames all equal one value c ~ N(0, 1) per pixel.

  Given z_f = alpha c + sigma eps_f, E[c | z] = alpha sum_f z_f / (T alpha^2 + sigma^2).
  """

  def predict_fn(z, logsnr):
    alpha, sigma = alpha_sigma(jnp.broadcast_to(logsnr, z.shape[:1]))
    a, s = alpha.reshape(-1, 1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1, 1)
    c_hat = a * jnp.sum(z, axis=1, keepdims=True) / (num_frames * a**2 + s**2)
    x_hat = jnp.broadcast_to(c_hat, z.shape)
    return x_hat, (z - a * x_hat) / s

  return predict_fn


@pytest.mark.parametrize("w_r", [0.0, 4.0])
def test_reconstruction_guidance_keeps_known_frames_and_matches_the_conditional(w_r):
  t, n = 6, 64
  known = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (n, 1, 2, 2, 1)) * 0.5, (n, t, 2, 2, 1))
  mask = jnp.zeros((n, t)).at[:, :2].set(1.0)  # frames 0, 1 known
  base = _tied_frames_predict_fn(t)
  predict_fn = g.reconstruction_guidance(base, known, mask, w_r, clip_x=False)
  cfg = smp.SamplerConfig("ddim", num_steps=32, clip_x=False)
  run = jax.jit(lambda z, rng: smp.sample_loop(predict_fn, z, rng, schedule=CosineSchedule(),
                                               config=cfg,
                                               post_step_fn=g.replace_known_frames(known, mask)))
  x = run(jax.random.normal(jax.random.key(2), known.shape), jax.random.key(3))
  np.testing.assert_array_equal(x[:, :2], known[:, :2])
  # The conditional answer: every frame equals the known value.
  err = float(jnp.sqrt(jnp.mean(jnp.square(x[:, 2:] - known[:, 2:]))))
  # Unconditional samples of the same model are far from it (c ~ N(0, 1), independent of the known).
  free = smp.sample_loop(base, jax.random.normal(jax.random.key(2), known.shape), jax.random.key(3),
                         schedule=CosineSchedule(), config=cfg)
  free_err = float(jnp.sqrt(jnp.mean(jnp.square(free[:, 2:] - known[:, 2:]))))
  assert free_err > 0.8
  if w_r > 0:
    assert err < 0.05, err  # guidance pulls the unknown frames onto the conditional answer
  else:
    assert err < free_err  # replacement alone helps, but less


def test_reconstruction_guidance_beats_replacement_alone():
  t, n = 6, 64
  known = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (n, 1, 2, 2, 1)) * 0.5, (n, t, 2, 2, 1))
  mask = jnp.zeros((n, t)).at[:, :1].set(1.0)
  cfg = smp.SamplerConfig("ddim", num_steps=16, clip_x=False)
  errs = []
  for w_r in (0.0, 4.0):
    predict_fn = g.reconstruction_guidance(_tied_frames_predict_fn(t), known, mask, w_r, clip_x=False)
    x = smp.sample_loop(predict_fn, jax.random.normal(jax.random.key(2), known.shape), jax.random.key(3),
                        schedule=CosineSchedule(), config=cfg,
                        post_step_fn=g.replace_known_frames(known, mask))
    errs.append(float(jnp.mean(jnp.square(x[:, 1:] - known[:, 1:]))))
  assert errs[1] < 0.5 * errs[0], errs
