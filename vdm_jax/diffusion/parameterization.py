"""Conversions between x, eps and v predictions (docs/MATH.md section 3).

With z = alpha x + sigma eps and alpha^2 + sigma^2 = 1:

    v = alpha eps - sigma x,   x = alpha z - sigma v,   eps = sigma z + alpha v
    x = (z - sigma eps) / alpha,   eps = (z - alpha x) / sigma

The v forms never divide, so they are stable at both ends of the schedule; eps -> x divides by alpha
(large at high noise) and x -> eps divides by sigma (large at low noise), which is inherent to those
parameterisations. `alpha` and `sigma` are per-example [B] (or scalars) and are broadcast against
[B, ...] arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PREDICTIONS = ("v", "eps", "x")


def broadcast_to(coef: jax.Array, x: jax.Array) -> jax.Array:
  """Reshape a per-example coefficient [B] (or scalar) to broadcast against x [B, ...]."""
  coef = jnp.asarray(coef, jnp.float32)
  if coef.ndim == 0:
    return coef
  return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def v_from_x_eps(x: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
  """v = alpha eps - sigma x, the velocity dz/dphi."""
  return broadcast_to(alpha, x) * eps - broadcast_to(sigma, x) * x


def x_from_v(z: jax.Array, v: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
  """x = alpha z - sigma v."""
  return broadcast_to(alpha, z) * z - broadcast_to(sigma, z) * v


def eps_from_v(z: jax.Array, v: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
  """eps = sigma z + alpha v."""
  return broadcast_to(sigma, z) * z + broadcast_to(alpha, z) * v


def x_from_eps(z: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
  """x = (z - sigma eps) / alpha."""
  return (z - broadcast_to(sigma, z) * eps) / broadcast_to(alpha, z)


def eps_from_x(z: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array) -> jax.Array:
  """eps = (z - alpha x) / sigma."""
  return (z - broadcast_to(alpha, z) * x) / broadcast_to(sigma, z)


def check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction target {prediction!r}; choose one of {PREDICTIONS}")


def to_x_eps(pred: jax.Array, z: jax.Array, alpha: jax.Array, sigma: jax.Array,
             prediction: str = "v") -> tuple[jax.Array, jax.Array]:
  """(x_hat, eps_hat) from a network output of kind `prediction`; all arrays [B, ...]."""
  check_prediction(prediction)
  if prediction == "v":
    return x_from_v(z, pred, alpha, sigma), eps_from_v(z, pred, alpha, sigma)
  if prediction == "eps":
    return x_from_eps(z, pred, alpha, sigma), pred
  return pred, eps_from_x(z, pred, alpha, sigma)


def target_for(x: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array,
               prediction: str = "v") -> jax.Array:
  """The regression target of a parameterisation: v, eps or x."""
  check_prediction(prediction)
  if prediction == "v":
    return v_from_x_eps(x, eps, alpha, sigma)
  return eps if prediction == "eps" else x
