"""Identities of the truncated cosine schedule (docs/MATH.md sections 1-2)."""

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


def _logsnr_float64(s, u):
  """-2 log tan(a u + b) + shift in float64 (docs/MATH.md section 2)."""
  b = math.atan(math.exp(-0.5 * s.logsnr_max))
  a = math.atan(math.exp(-0.5 * s.logsnr_min)) - b
  return -2.0 * np.log(np.tan(a * np.asarray(u, np.float64) + b)) + s.shift


_SCHEDULES = [sch.CosineSchedule(),
              sch.CosineSchedule(-15.0, 12.0, shift=sch.resolution_shift(128))]


@pytest.mark.parametrize("s", _SCHEDULES, ids=["default", "asymmetric_shifted"])
def test_logsnr_matches_float64_reference_up_to_float32_rounding(s):
  # Dense grid holding 0, 1/2 and 1 exactly; the reference is evaluated at the same float32 u.
  # float32 tan(a u + b) near pi/2 was off by 1.1e-3 at u = 1 (default schedule, 5.5e-5 of
  # max(1, |lambda|)) and 8.4e-5 near u = 1 (asymmetric); the complementary angle reaches
  # ~1e-6 absolute, 3.3e-7 of max(1, |lambda|): float32 rounding of |lambda| <= 20.
  u = np.linspace(0.0, 1.0, 4097, dtype=np.float32)
  assert u[0] == 0.0 and u[2048] == 0.5 and u[-1] == 1.0
  ref = _logsnr_float64(s, u)
  got = np.asarray(s.logsnr(jnp.asarray(u)), np.float64)
  rel_err = np.abs(got - ref) / np.maximum(1.0, np.abs(ref))
  assert rel_err.max() < 1e-6, (rel_err.max(), u[rel_err.argmax()])
  lo, hi = s.logsnr_bounds
  np.testing.assert_allclose(got[[0, -1]], [hi, lo], atol=4e-6)
  # time_from_logsnr still inverts it over the whole grid, endpoints included.
  np.testing.assert_allclose(s.time_from_logsnr(jnp.asarray(got, jnp.float32)), u, atol=2e-7)


def test_logsnr_is_accurate_traced_jitted_and_for_any_shape():
  s = _SCHEDULES[1]
  u = jax.random.uniform(jax.random.key(0), (3, 5, 7))
  u = u.at[0, 0, :3].set(jnp.array([0.0, 0.5, 1.0]))
  ref = _logsnr_float64(s, np.asarray(u))
  for fn in (s.logsnr, jax.jit(s.logsnr), jax.vmap(s.logsnr)):
    got = fn(u)
    assert got.shape == u.shape and got.dtype == jnp.float32
    rel_err = np.abs(np.asarray(got, np.float64) - ref) / np.maximum(1.0, np.abs(ref))
    assert rel_err.max() < 1e-6, rel_err.max()
  assert s.logsnr(0.75).shape == ()


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
