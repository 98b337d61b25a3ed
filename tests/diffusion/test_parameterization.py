"""Conversions between v, eps and x (docs/MATH.md section 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.diffusion import parameterization as p
from vdm_jax.diffusion.schedule import alpha_sigma


def _data(lams):
  kx, ke = jax.random.split(jax.random.key(0))
  shape = (len(lams), 3, 4, 4, 2)
  x = jax.random.uniform(kx, shape, minval=-1, maxval=1)
  eps = jax.random.normal(ke, shape)
  alpha, sigma = alpha_sigma(jnp.asarray(lams, jnp.float32))
  z = p.broadcast_to(alpha, x) * x + p.broadcast_to(sigma, x) * eps
  return x, eps, z, alpha, sigma


def test_v_round_trips_at_both_ends():
  lams = [-20.0, -5.0, 0.0, 5.0, 20.0]
  x, eps, z, alpha, sigma = _data(lams)
  v = p.v_from_x_eps(x, eps, alpha, sigma)
  np.testing.assert_allclose(p.x_from_v(z, v, alpha, sigma), x, atol=2e-6)
  np.testing.assert_allclose(p.eps_from_v(z, v, alpha, sigma), eps, atol=2e-6)


@pytest.mark.parametrize("prediction", ["v", "eps", "x"])
def test_to_x_eps_inverts_target_for(prediction):
  lams = [-4.0, -1.0, 0.0, 2.0, 4.0]  # mid range, where eps <-> x divisions are well conditioned
  x, eps, z, alpha, sigma = _data(lams)
  target = p.target_for(x, eps, alpha, sigma, prediction)
  x_hat, eps_hat = p.to_x_eps(target, z, alpha, sigma, prediction)
  np.testing.assert_allclose(x_hat, x, atol=1e-4)
  np.testing.assert_allclose(eps_hat, eps, atol=1e-4)


def test_v_is_dz_dphi():
  # z(phi) = cos(phi) x + sin(phi) eps  =>  dz/dphi = -sin(phi) x + cos(phi) eps = v.
  x, eps = jnp.array(0.3), jnp.array(-1.2)
  z_of_phi = lambda phi: jnp.cos(phi) * x + jnp.sin(phi) * eps
  phi = 0.7
  np.testing.assert_allclose(jax.grad(z_of_phi)(phi),
                             p.v_from_x_eps(x, eps, jnp.cos(phi), jnp.sin(phi)), rtol=1e-6)


def test_unknown_prediction_raises():
  with pytest.raises(ValueError, match="prediction target"):
    p.target_for(jnp.zeros(1), jnp.zeros(1), 1.0, 0.0, "score")
