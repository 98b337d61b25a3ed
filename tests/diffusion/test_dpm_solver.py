"""DPM-Solver++(2M) (samplers.dpmpp2m_update, sampler "dpmpp2m") against a float64 NumPy reference on
Gaussian data, whose exact denoiser and probability-flow ODE solution are closed form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import diffusion, generation
from vdm_jax.diffusion import parameterization as p
from vdm_jax.diffusion import samplers as smp
from vdm_jax.diffusion.schedule import CosineSchedule, alpha_sigma

SHAPE = (4, 2, 3, 3, 1)
MU = np.linspace(-0.6, 0.7, 18).reshape(1, 2, 3, 3, 1)
STD = np.linspace(0.2, 0.6, 18)[::-1].reshape(1, 2, 3, 3, 1)


def _np_alpha_sigma(logsnr):
  return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def _np_logsnr(u, logsnr_min=-20.0, logsnr_max=20.0):
  b = np.arctan(np.exp(-0.5 * logsnr_max))
  a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
  return -2.0 * np.log(np.tan(a * np.asarray(u, np.float64) + b))


def _np_x_hat(z, logsnr):
  """E[x | z] for x ~ N(MU, STD^2) per element."""
  a, s = _np_alpha_sigma(logsnr)
  return MU + a * STD**2 / (a**2 * STD**2 + s**2) * (z - a * MU)


def _gaussian_denoise_fn(z, logsnr, cond):
  """The same exact denoiser in float32, as a v prediction."""
  alpha, sigma = alpha_sigma(logsnr)
  a, s = p.broadcast_to(alpha, z), p.broadcast_to(sigma, z)
  x_hat = MU + a * STD**2 / (a**2 * STD**2 + s**2) * (z - a * MU)
  return p.v_from_x_eps(x_hat, (z - a * x_hat) / s, alpha, sigma)


def reference_dpmpp2m(z, n):
  """DPM-Solver++(2M) written out in float64 (Lu et al. 2022, Algorithm 2, lambda = logsnr / 2),
  on the grid u_i = i / n, first step first order, the last step returning x_hat."""
  lam = 0.5 * _np_logsnr(np.arange(n + 1) / n)
  x_prev = None
  for i in range(n - 1, -1, -1):
    x_hat = _np_x_hat(z, 2 * lam[i + 1])
    if i == 0:
      return x_hat
    h = lam[i] - lam[i + 1]
    d = x_hat if x_prev is None else x_hat + (x_hat - x_prev) * h / (2 * (lam[i + 1] - lam[i + 2]))
    (_, sigma_t), (alpha_s, sigma_s) = _np_alpha_sigma(2 * lam[i + 1]), _np_alpha_sigma(2 * lam[i])
    z = sigma_s / sigma_t * z - alpha_s * np.expm1(-h) * d
    x_prev = x_hat


def reference_ddim(z, n):
  lam = _np_logsnr(np.arange(n + 1) / n)
  for i in range(n - 1, -1, -1):
    x_hat = _np_x_hat(z, lam[i + 1])
    if i == 0:
      return x_hat
    (alpha_t, sigma_t), (alpha_s, sigma_s) = _np_alpha_sigma(lam[i + 1]), _np_alpha_sigma(lam[i])
    z = alpha_s * x_hat + sigma_s * (z - alpha_t * x_hat) / sigma_t


def exact_ode_target(z1, n):
  """x_hat at the exact probability-flow solution at u_1 = 1 / n from z1 at u = 1.

  The samplers' last step returns x_hat(z(u_1)), so this is what their ODE error is measured to.
  """
  return _np_x_hat(_exact_z(z1, 1.0 / n), _np_logsnr(1.0 / n))


def _solver(sampler, n):
  """jitted (carry, start, stop) -> carry of `sampler` with the exact denoiser; .config its config."""
  cfg = smp.SamplerConfig(sampler, num_steps=n, clip_x=False)
  predict_fn = smp.make_predict_fn(_gaussian_denoise_fn, None, clip_x=False)
  loop = jax.jit(lambda carry, a, b: smp.sample_loop(
      predict_fn, carry, jax.random.key(0), schedule=CosineSchedule(), config=cfg, start=a, stop=b))
  loop.config = cfg
  return loop


def _solve(sampler, n, z):
  loop = _solver(sampler, n)
  return smp.carry_sample(loop(smp.initial_carry(z, loop.config), 0, n))


@pytest.fixture(scope="module")
def z1():
  return np.asarray(jax.random.normal(jax.random.key(1), SHAPE), np.float64)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_dpmpp2m_matches_the_float64_reference(z1, n):
  got = _solve("dpmpp2m", n, jnp.asarray(z1, jnp.float32))
  np.testing.assert_allclose(got, reference_dpmpp2m(z1, n), atol=2e-5, rtol=0)


def test_dpmpp2m_first_step_and_single_step_equal_ddim(z1):
  # The first step has no previous prediction: first order, i.e. DDIM (eta 0).
  z = jnp.asarray(z1, jnp.float32)
  x_hat = jnp.tanh(z)
  lam_t, lam_s = smp.step_logsnrs(CosineSchedule(), 4, 3)
  eps_hat = p.eps_from_x(z, x_hat, *alpha_sigma(lam_t))
  got = smp.dpmpp2m_update(z, x_hat, jnp.full_like(z, jnp.nan), lam_t, lam_t, lam_s, True)
  np.testing.assert_allclose(got, smp.ddim_update(z, x_hat, eps_hat, lam_t, lam_s), atol=1e-5)
  for n in (1, 2):  # one step: x_hat; two: a first-order step then x_hat
    np.testing.assert_allclose(_solve("dpmpp2m", n, z), _solve("ddim", n, z), atol=1e-6)


def _exact_z(z1, u):
  """The exact probability-flow solution at time u from z1 at u = 1 (w = (z - alpha MU) / std_u is
  constant along the flow for Gaussian data)."""
  (a1, s1), (a, s) = _np_alpha_sigma(_np_logsnr(1.0)), _np_alpha_sigma(_np_logsnr(u))
  w = (z1 - a1 * MU) / np.sqrt(a1**2 * STD**2 + s1**2)
  return a * MU + np.sqrt(a**2 * STD**2 + s**2) * w


def test_error_falls_at_second_order_against_ddim_first_order(z1):
  # z at u = 1/4 (the first 3N/4 steps): the ODE error halves per doubling of N for DDIM (order 1)
  # and quarters for DPM-Solver++(2M) (measured rates 1.95, 1.87, 1.83: order ~2, less the first,
  # first-order step from lambda = -20).
  ns = (8, 16, 32)
  target = _exact_z(z1, 0.25)
  z = jnp.asarray(z1, jnp.float32)
  err, final = {}, {}
  for sampler in ("ddim", "dpmpp2m"):
    err[sampler], final[sampler] = [], []
    for n in ns:
      loop = _solver(sampler, n)
      z_quarter = loop(smp.initial_carry(z, loop.config), 0, 3 * n // 4)
      err[sampler].append(np.abs(np.asarray(smp.carry_sample(z_quarter), np.float64) - target).max())
      x = smp.carry_sample(loop(z_quarter, 3 * n // 4, n))
      final[sampler].append(np.abs(np.asarray(x, np.float64) - exact_ode_target(z1, n)).max())
  order = {s: np.log2(np.array(e[:-1]) / np.array(e[1:])) for s, e in err.items()}
  assert np.all(np.abs(order["ddim"] - 1) < 0.15), (err, order)
  assert np.all(order["dpmpp2m"] > 1.7), (err, order)
  # The final x (the last step returns x_hat at u_1 = 1/N): 4.5-18x closer to the exact flow's.
  assert np.all(np.array(final["dpmpp2m"]) < np.array(final["ddim"]) / 4), final


def _chunk_fn(cfg, **kw):
  fn = generation.make_chunk_fn_from_denoiser(lambda params: params, schedule=CosineSchedule(),
                                              sampler_config=cfg, **kw)
  return jax.jit(fn, static_argnums=0)


@pytest.mark.parametrize("frame_method", [None, "replacement", "reconstruction"])
def test_generation_chunks_equal_one_chunk(z1, frame_method):
  n = 6
  cfg = smp.SamplerConfig("dpmpp2m", num_steps=n, clip_x=frame_method is not None)
  chunk_fn = _chunk_fn(cfg, frame_method=frame_method, reconstruction_weight=2.0)
  x_known = jnp.asarray(np.tanh(z1), jnp.float32)
  mask = jnp.zeros(SHAPE[:2]).at[:, 0].set(1.0)
  carry = diffusion.initial_carry(jnp.asarray(z1, jnp.float32), cfg)
  args = (jax.random.key(2), None, x_known, mask)
  whole = chunk_fn(_gaussian_denoise_fn, carry, *args, 0, n)
  part = carry
  for start in range(0, n, 4):
    part = chunk_fn(_gaussian_denoise_fn, part, *args, start, min(start + 4, n))
  assert chunk_fn._cache_size() == 1  # pylint: disable=protected-access
  np.testing.assert_array_equal(diffusion.carry_sample(part), diffusion.carry_sample(whole))
  if frame_method is None:
    np.testing.assert_allclose(diffusion.carry_sample(whole), reference_dpmpp2m(z1, n), atol=2e-5)
  else:  # known frames end exactly at x_known
    np.testing.assert_allclose(diffusion.carry_sample(whole)[:, 0], x_known[:, 0], atol=1e-6)


def test_classifier_free_guidance_is_the_guided_denoiser(z1):
  # A class-conditioned exact denoiser (mean shifted by the label): guided dpmpp2m through the chunk
  # function equals dpmpp2m on the hand-guided denoiser (1 + w) D(c) - w D(null).
  from vdm_jax.denoiser import Conditioning
  w, n = 1.5, 5

  def denoise(z, logsnr, cond):
    shift = 0.3 * cond.labels.astype(jnp.float32).reshape(-1, 1, 1, 1, 1)
    return _gaussian_denoise_fn(z, logsnr, None) + shift

  cfg = smp.SamplerConfig("dpmpp2m", num_steps=n, clip_x=False)
  cond = Conditioning(labels=jnp.array([0, 1, 2, 1]))
  chunk_fn = _chunk_fn(cfg, num_classes=3, guidance_weight=w)
  carry = diffusion.initial_carry(jnp.asarray(z1, jnp.float32), cfg)
  got = diffusion.carry_sample(chunk_fn(denoise, carry, jax.random.key(0), cond, carry[0],
                                        jnp.zeros(SHAPE[:2]), 0, n))
  null = Conditioning(labels=jnp.full((4,), 3))
  by_hand = lambda z, lam, c: (1 + w) * denoise(z, lam, cond) - w * denoise(z, lam, null)
  want = diffusion.sample_loop(smp.make_predict_fn(by_hand, None, clip_x=False), carry,
                               jax.random.key(0), schedule=CosineSchedule(), config=cfg)
  np.testing.assert_allclose(got, diffusion.carry_sample(want), atol=1e-5)


def test_ddim_and_ancestral_carry_is_the_latent():
  z = jnp.ones((2, 3))
  for sampler in ("ddim", "ancestral"):
    assert smp.initial_carry(z, smp.SamplerConfig(sampler)) is z
  carry = smp.initial_carry(z, smp.SamplerConfig("dpmpp2m"))
  assert isinstance(carry, tuple) and smp.carry_sample(carry) is z
  with pytest.raises(ValueError, match="multistep"):
    smp.sampler_step(None, z, 0.0, 1.0, jax.random.key(0), smp.SamplerConfig("dpmpp2m"), False)
  with pytest.raises(ValueError, match="initial_carry"):
    smp.sample_loop(None, z, jax.random.key(0), schedule=CosineSchedule(),
                    config=smp.SamplerConfig("dpmpp2m"))


def test_dpmpp2m_costs_one_call_per_step():
  calls, k = [], 2

  def denoise_fn(z, logsnr, cond):
    jax.debug.callback(lambda: calls.append(1))
    return 0.2 * z

  cfg = smp.SamplerConfig("dpmpp2m", num_steps=5, corrector_steps=k)
  jax.jit(functools.partial(smp.sample, denoise_fn, config=cfg), static_argnums=1)(
      jax.random.key(0), (2, 2, 3, 3, 1)).block_until_ready()
  jax.effects_barrier()
  assert len(calls) == 5 + 4 * k
