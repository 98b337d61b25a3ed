"""Identities of the truncated cosine schedule (MATH.md sections 1-2)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.diffusion import schedule as sch


def test_endpoints_and_monotone():
  s = sch.CosineSchedule(-20.0, 20.0)
  u = jnp.linspace(0.0, 1.0, 101)
  lam = np.asarray(s.logsnr(u))
  np.testing.assert_allclose(lam[[0, -1]], [20.0, -20.0], atol=2e-3)
  assert np.all(np.diff(lam) < 0)


def test_alpha_sigma_unit_circle_and_angle_linear_in_u():
  s = sch.CosineSchedule(-15.0, 12.0)
  u = jnp.linspace(0.0, 1.0, 257)
  lam = s.logsnr(u)
  alpha, sigma = sch.alpha_sigma(lam)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  phi = np.asarray(sch.angle_from_logsnr(lam), np.float64)
  np.testing.assert_allclose(np.arctan2(sigma, alpha), phi, atol=1e-6)
  # phi(u) = a u + b exactly: second differences vanish, slope matches the closed form.
  np.testing.assert_allclose(np.diff(phi, 2), 0.0, atol=2e-6)
  b = math.atan(math.exp(-6.0))
  a = math.atan(math.exp(7.5)) - b
  np.testing.assert_allclose(phi, a * np.asarray(u) + b, atol=2e-6)


def test_logsnr_matches_closed_form_in_float64():
  u = np.linspace(0.0, 1.0, 33)
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b
  ref = -2.0 * np.log(np.tan(a * u + b))
  got = np.asarray(sch.CosineSchedule().logsnr(jnp.asarray(u, jnp.float32)))
  # float32 tan near pi/2 limits precision at u -> 1 (relative 1e-4 of |lambda| = 20).
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_inverse_round_trip_with_shift():
  s = sch.CosineSchedule(shift=sch.resolution_shift(128))
  assert s.shift == pytest.approx(2.0 * math.log(0.5))
  u = jnp.linspace(0.02, 0.98, 49)
  np.testing.assert_allclose(s.time_from_logsnr(s.logsnr(u)), u, atol=2e-5)
  np.testing.assert_allclose(s.logsnr(u) - sch.CosineSchedule().logsnr(u), s.shift, atol=1e-4)


def test_noise_level_is_normalised_angle():
  lam = jnp.array([20.0, 0.0, -20.0])
  nl = np.asarray(sch.noise_level_from_logsnr(lam))
  np.testing.assert_allclose(nl, [0.0, 0.5, 1.0], atol=1e-4)


def test_low_discrepancy_times_are_evenly_spread():
  u = np.sort(np.asarray(sch.sample_times(jax.random.key(3), 16, "low_discrepancy")))
  assert np.all((u >= 0) & (u < 1))
  np.testing.assert_allclose(np.diff(u), 1.0 / 16, atol=1e-6)


def test_normal_logsnr_sampling_statistics_and_bounds():
  s = sch.CosineSchedule()
  lam = np.asarray(sch.sample_training_logsnr(jax.random.key(0), 20000, s, logsnr_sampling="normal",
                                               p_mean=-1.0, p_std=1.5))
  assert lam.mean() == pytest.approx(2.0, abs=0.1)
  assert lam.std() == pytest.approx(3.0, abs=0.1)
  assert lam.min() >= -20.0 and lam.max() <= 20.0


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
    sch.CosineSchedule(5.0, -5.0)
  with pytest.raises(ValueError, match="time sampling"):
    sch.sample_times(jax.random.key(0), 4, "sobol")
  with pytest.raises(ValueError, match="log-SNR sampling"):
    sch.sample_training_logsnr(jax.random.key(0), 4, sch.CosineSchedule(), logsnr_sampling="beta")
