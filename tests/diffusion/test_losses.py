"""Loss weightings (docs/MATH.md section 4) and the diffusion loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.diffusion import parameterization as p
from vdm_jax.diffusion.losses import diffusion_loss, log_weight
from vdm_jax.diffusion.schedule import CosineSchedule, alpha_sigma

SHAPE = (6, 4, 4, 4, 3)


def _sq(a):
  return np.sum(np.square(np.asarray(a, np.float64)), axis=(1, 2, 3, 4))


def test_weighting_identities_numerically():
  lam = jnp.array([-6.0, -2.0, -0.5, 0.0, 1.5, 6.0])
  alpha, sigma = alpha_sigma(lam)
  k = jax.random.split(jax.random.key(1), 3)
  x = jax.random.uniform(k[0], SHAPE, minval=-1, maxval=1)
  eps = jax.random.normal(k[1], SHAPE)
  z = p.broadcast_to(alpha, x) * x + p.broadcast_to(sigma, x) * eps
  x_hat = x + 0.1 * jax.random.normal(k[2], SHAPE)
  eps_hat = p.eps_from_x(z, x_hat, alpha, sigma)
  v, v_hat = p.v_from_x_eps(x, eps, alpha, sigma), p.v_from_x_eps(x_hat, eps_hat, alpha, sigma)
  snr = np.exp(np.asarray(lam, np.float64))
  a2, s2 = np.asarray(alpha, np.float64)**2, np.asarray(sigma, np.float64)**2
  ex, ee, ev = _sq(x - x_hat), _sq(eps - eps_hat), _sq(v - v_hat)
  np.testing.assert_allclose(ev, (1 + snr) * ex, rtol=1e-4)
  np.testing.assert_allclose(ev, ex / s2, rtol=1e-4)
  np.testing.assert_allclose(ev, ee / a2, rtol=1e-4)
  np.testing.assert_allclose(ee, snr * ex, rtol=1e-4)
  np.testing.assert_allclose(np.maximum(ex, ee), np.maximum(snr, 1) * ex, rtol=1e-4)
  # The log-weights used by the loss are the same functions of lambda.
  lw = lambda name, **kw: np.exp(np.asarray(log_weight(lam, name, **kw), np.float64))
  np.testing.assert_allclose(lw("v"), 1 + snr, rtol=1e-5)
  np.testing.assert_allclose(lw("eps"), snr, rtol=1e-5)
  np.testing.assert_allclose(lw("x"), 1.0)
  np.testing.assert_allclose(lw("truncated_snr"), np.maximum(snr, 1), rtol=1e-5)
  np.testing.assert_allclose(lw("min_snr", min_snr_gamma=5.0), np.minimum(snr, 5.0), rtol=1e-5)


def _x_space_denoiser(prediction):
  """A fixed, imperfect denoiser: x_hat = 0.5 * z, expressed in the asked parameterisation."""

  def denoise_fn(z, logsnr, cond):
    alpha, sigma = alpha_sigma(logsnr)
    x_hat = 0.5 * z
    eps_hat = p.eps_from_x(z, x_hat, alpha, sigma)
    return p.target_for(x_hat, eps_hat, alpha, sigma, prediction)

  return denoise_fn


@pytest.mark.parametrize("weighting", ["v", "eps", "x", "truncated_snr", "min_snr"])
def test_same_denoiser_same_loss_in_every_parameterisation(weighting):
  x = jax.random.uniform(jax.random.key(0), SHAPE, minval=-1, maxval=1)
  schedule = CosineSchedule(-6.0, 6.0)  # keep eps <-> x divisions well conditioned
  losses = [diffusion_loss(_x_space_denoiser(pr), x, jax.random.key(5), schedule=schedule,
                           prediction=pr, weighting=weighting)[0] for pr in ("v", "eps", "x")]
  np.testing.assert_allclose(losses[0], losses[1], rtol=2e-3)
  np.testing.assert_allclose(losses[0], losses[2], rtol=2e-3)


def test_v_loss_is_plain_v_mse():
  x = jax.random.uniform(jax.random.key(0), SHAPE, minval=-1, maxval=1)
  denoise_fn = lambda z, lam, c: 0.3 * z
  loss, aux = diffusion_loss(denoise_fn, x, jax.random.key(2))
  # Recompute by hand with the same keys.
  rng_t, rng_eps = jax.random.split(jax.random.key(2))
  lam = CosineSchedule().logsnr(jax.random.uniform(rng_t, (SHAPE[0],)))
  alpha, sigma = alpha_sigma(lam)
  eps = jax.random.normal(rng_eps, SHAPE)
  z = p.broadcast_to(alpha, x) * x + p.broadcast_to(sigma, x) * eps
  v = p.v_from_x_eps(x, eps, alpha, sigma)
  np.testing.assert_allclose(loss, jnp.mean(jnp.square(0.3 * z - v), axis=(1, 2, 3, 4)), rtol=1e-5)
  np.testing.assert_allclose(aux["logsnr"], lam, rtol=1e-6)
  assert loss.shape == (SHAPE[0],) and np.all(np.isfinite(loss))


def test_frame_mask_ignores_known_frames():
  x = jax.random.uniform(jax.random.key(0), SHAPE, minval=-1, maxval=1)
  mask = jnp.array([[0, 1, 1, 1]] * SHAPE[0], jnp.float32)

  def make(bad):
    def denoise_fn(z, lam, c):
      return z.at[:, 0].set(bad)  # garbage only on frame 0
    return denoise_fn

  l1, _ = diffusion_loss(make(0.0), x, jax.random.key(3), frame_mask=mask)
  l2, _ = diffusion_loss(make(100.0), x, jax.random.key(3), frame_mask=mask)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  l3, _ = diffusion_loss(make(100.0), x, jax.random.key(3))
  assert np.all(l3 > l1 + 100.0)


def test_unknown_weighting_raises():
  with pytest.raises(ValueError, match="loss weighting"):
    diffusion_loss(lambda z, logsnr, c: z, jnp.zeros(SHAPE), jax.random.key(0), weighting="p2")
