"""Samplers driven by exact (oracle) denoisers (docs/MATH.md section 5)."""

import decimal
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.diffusion import parameterization as p
from vdm_jax.diffusion import samplers as smp
from vdm_jax.diffusion.schedule import CosineSchedule, alpha_sigma


def oracle_for_x_fn(x_hat_fn, prediction):
  """denoise_fn returning the exact posterior mean x_hat_fn(z, alpha, sigma) as a `prediction`."""

  def denoise_fn(z, logsnr, cond):
    alpha, sigma = alpha_sigma(logsnr)
    a, s = p.broadcast_to(alpha, z), p.broadcast_to(sigma, z)
    x_hat = x_hat_fn(z, a, s)
    return p.target_for(x_hat, (z - a * x_hat) / s, alpha, sigma, prediction)

  return denoise_fn


@pytest.mark.parametrize("prediction", ["v", "eps", "x"])
def test_ddim_returns_the_single_data_point(prediction):
  x0 = jax.random.uniform(jax.random.key(0), (1, 4, 6, 6, 3), minval=-0.9, maxval=0.9)
  denoise_fn = oracle_for_x_fn(lambda z, a, s: jnp.broadcast_to(x0, z.shape), prediction)
  cfg = smp.SamplerConfig("ddim", num_steps=16, clip_x=False)
  run = jax.jit(functools.partial(smp.sample, denoise_fn, config=cfg, prediction=prediction),
                static_argnums=1)
  for seed in range(3):
    out = run(jax.random.key(seed), (3,) + x0.shape[1:])
    np.testing.assert_allclose(out, jnp.broadcast_to(x0, out.shape), atol=1e-5)


def test_ddim_trajectory_stays_on_the_noise_ray():
  # With a single-point oracle, DDIM keeps z_s = alpha_s x0 + sigma_s eps for the initial eps.
  x0 = jnp.full((2, 2, 3, 3, 1), 0.4)
  eps = jax.random.normal(jax.random.key(1), x0.shape)
  predict_fn = smp.make_predict_fn(oracle_for_x_fn(lambda z, a, s: x0, "v"), None, clip_x=False)
  cfg = smp.SamplerConfig("ddim", num_steps=10)
  schedule = CosineSchedule()
  z = eps  # u = 1: alpha ~ 4.5e-5, so eps alone is z_1 up to 4.5e-5 x0
  z = z * alpha_sigma(schedule.logsnr(1.0))[1] + alpha_sigma(schedule.logsnr(1.0))[0] * x0
  z = smp.sample_loop(predict_fn, z, jax.random.key(0), schedule=schedule, config=cfg, stop=5)
  alpha_s, sigma_s = alpha_sigma(schedule.logsnr(5 / 10))
  np.testing.assert_allclose(z, alpha_s * x0 + sigma_s * eps, atol=1e-5)


def _gaussian_oracle(mu, std):
  # x ~ N(mu, std^2) per element: E[x | z] = mu + alpha std^2 / (alpha^2 std^2 + sigma^2) (z - alpha mu).
  return lambda z, a, s: mu + a * std**2 / (a**2 * std**2 + s**2) * (z - a * mu)


@pytest.mark.parametrize("cfg", [
    smp.SamplerConfig("ancestral", num_steps=256, gamma=0.0, clip_x=False),
    smp.SamplerConfig("ancestral", num_steps=256, gamma=0.3, clip_x=False),
    smp.SamplerConfig("ddim", num_steps=128, eta=0.0, clip_x=False),
    smp.SamplerConfig("ddim", num_steps=256, eta=1.0, clip_x=False),
    smp.SamplerConfig("ancestral", num_steps=128, clip_x=False, corrector_steps=1),
], ids=["ancestral", "ancestral_gamma0.3", "ddim", "ddim_eta1", "ancestral_corrector"])
def test_gaussian_data_mean_and_variance(cfg):
  n = 2048
  mu = jnp.array([-0.5, 0.0, 0.3, 0.8]).reshape(1, 4, 1, 1, 1)
  std = jnp.array([0.6, 0.5, 0.3, 0.4]).reshape(1, 4, 1, 1, 1)
  denoise_fn = oracle_for_x_fn(_gaussian_oracle(mu, std), "v")
  run = jax.jit(functools.partial(smp.sample, denoise_fn, config=cfg), static_argnums=1)
  x = np.asarray(run(jax.random.key(0), (n, 4, 2, 2, 1)), np.float64)
  flat = x.transpose(1, 0, 2, 3, 4).reshape(4, -1)
  # Statistical tolerances: 2048 x 4 samples per frame (std error of the std ~0.8%); the rest of the
  # 5% allows the step discretisation's bias, which `test_variance_bias_vanishes_with_more_steps` pins.
  mean_err = np.abs(flat.mean(1) - np.asarray(mu).ravel()) / np.asarray(std).ravel()
  std_ratio = flat.std(1) / np.asarray(std).ravel()
  assert np.all(mean_err < 4 / np.sqrt(flat.shape[1])), mean_err  # 4 standard errors of the mean
  assert np.all(np.abs(std_ratio - 1) < 0.05), std_ratio


def test_variance_bias_vanishes_with_more_steps():
  # Narrow data (std 0.05) is decided in the few steps at high log-SNR: the plug-in x_hat
  # under-disperses there, and the bias must shrink as the grid refines.
  mu, std = jnp.float32(0.2), jnp.float32(0.05)
  denoise_fn = oracle_for_x_fn(_gaussian_oracle(mu, std), "v")
  ratios = []
  for n in (32, 128, 512):
    cfg = smp.SamplerConfig("ddim", num_steps=n, clip_x=False)
    x = jax.jit(functools.partial(smp.sample, denoise_fn, config=cfg), static_argnums=1)(
        jax.random.key(0), (2048, 1, 2, 2, 1))
    ratios.append(float(np.std(np.asarray(x))) / 0.05)
  errors = np.abs(np.array(ratios) - 1)
  assert errors[0] > errors[1] > errors[2], ratios
  assert errors[2] < 0.04, ratios


def test_ancestral_update_equals_the_posterior_of_the_forward_process():
  # Independent form (Kingma et al. 2021): q(z_s | z_t, x) has
  # mean = alpha_{t|s} sigma_s^2 / sigma_t^2 z_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x,
  # var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2, alpha_{t|s} = alpha_t / alpha_s,
  # sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2.
  lam_t, lam_s = np.float64(-1.3), np.float64(2.1)
  a_t, s_t = np.sqrt(1 / (1 + np.exp(-lam_t))), np.sqrt(1 / (1 + np.exp(lam_t)))
  a_s, s_s = np.sqrt(1 / (1 + np.exp(-lam_s))), np.sqrt(1 / (1 + np.exp(lam_s)))
  a_ts = a_t / a_s
  s2_ts = s_t**2 - a_ts**2 * s_s**2
  z_t = np.linspace(-2, 2, 24).reshape(1, 2, 3, 4, 1)
  x = np.tanh(z_t * 0.7)
  rng = jax.random.key(9)
  noise = np.asarray(jax.random.normal(rng, z_t.shape), np.float64)
  ref = a_ts * s_s**2 / s_t**2 * z_t + a_s * s2_ts / s_t**2 * x + np.sqrt(s2_ts * s_s**2 / s_t**2) * noise
  got = smp.ancestral_update(jnp.asarray(z_t, jnp.float32), jnp.asarray(x, jnp.float32),
                             jnp.float32(lam_t), jnp.float32(lam_s), gamma=0.0, rng=rng)
  np.testing.assert_allclose(got, ref, atol=2e-5)
  # gamma = 1 uses the large variance (1 - r) sigma_t^2 instead.
  got1 = smp.ancestral_update(jnp.asarray(z_t, jnp.float32), jnp.asarray(x, jnp.float32),
                              jnp.float32(lam_t), jnp.float32(lam_s), gamma=1.0, rng=rng)
  r = np.exp(lam_t - lam_s)
  expected = (np.sqrt((1 - r) * s_t**2) - np.sqrt(s2_ts * s_s**2 / s_t**2)) * noise
  np.testing.assert_allclose(got1 - got, expected, atol=2e-5)


def test_ddim_eta_one_is_ancestral_small_variance():
  z_t = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 2))
  lam_t, lam_s = jnp.float32(-0.5), jnp.float32(1.0)
  alpha, sigma = alpha_sigma(lam_t)
  x_hat = jnp.tanh(z_t)
  eps_hat = p.eps_from_x(z_t, x_hat, alpha, sigma)
  rng = jax.random.key(4)
  a = smp.ddim_update(z_t, x_hat, eps_hat, lam_t, lam_s, eta=1.0, rng=rng)
  b = smp.ancestral_update(z_t, x_hat, lam_t, lam_s, gamma=0.0, rng=rng)
  np.testing.assert_allclose(a, b, atol=1e-5)
  # eta = 0: the angular form equals alpha_s x_hat + sigma_s eps_hat.
  alpha_s, sigma_s = alpha_sigma(lam_s)
  np.testing.assert_allclose(smp.ddim_update(z_t, x_hat, eps_hat, lam_t, lam_s),
                             alpha_s * x_hat + sigma_s * eps_hat, atol=1e-5)


def _ddim_coefficients_reference(logsnr_t, logsnr_s, eta):
  """(alpha_s, sqrt(sigma_s^2 - c^2), c) at 60 digits from the float32 log-SNRs.

  The difference form itself, c^2 = eta^2 (1 - r) sigma_s^2 (docs/MATH.md section 5): float64
  would cancel too for one step (r = e^-40 < 2^-52), so the reference uses `decimal`.
  """
  with decimal.localcontext() as ctx:
    ctx.prec = 60
    lam_t, lam_s, eta = (decimal.Decimal(float(v)) for v in (logsnr_t, logsnr_s, eta))
    alpha2, sigma2 = 1 / (1 + (-lam_s).exp()), 1 / (1 + lam_s.exp())
    c2 = eta**2 * (1 - (lam_t - lam_s).exp()) * sigma2
    return np.array([float(alpha2.sqrt()), float((sigma2 - c2).sqrt()), float(c2.sqrt())])


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_ddim_coefficients_match_high_precision_reference(n, eta):
  # ddim_update is linear in (x_hat, eps_hat, noise): read its three coefficients off it, scaling
  # eps_hat by 1 / e_ref so that a tiny eps coefficient is not lost next to c * noise.
  # sqrt(sigma_s^2 - c^2) in float32 gave e = 0 on the first step from noise for eta = 1 and
  # n = 1, 2, 4 (e_ref = 9.4e-14, 3.2e-5, 1.0e-4) and 2.44e-4 for 2.24e-4 at n = 8 (9% off);
  # the factored form matches to 3.3e-7 relative on every step.
  rng = jax.random.key(5)
  shape = (2, 3)
  noise = np.asarray(jax.random.normal(rng, shape), np.float64)
  zero = jnp.zeros(shape)
  for i in range(n - 1, -1, -1):
    lam_t, lam_s = smp.step_logsnrs(CosineSchedule(), n, i)
    ref = _ddim_coefficients_reference(lam_t, lam_s, eta)
    scale = np.float32(1.0 / ref[1])
    update = lambda x, e, lam_t=lam_t, lam_s=lam_s: np.asarray(smp.ddim_update(
        zero, jnp.full(shape, x), jnp.full(shape, e), lam_t, lam_s, eta=eta, rng=rng), np.float64)
    base = update(0.0, 0.0)
    got = np.array([(update(1.0, 0.0) - base)[0, 0], (update(0.0, scale) - base)[0, 0] / scale,
                    (base / noise)[0, 0]])
    np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=f"step {i} of {n}, eta {eta}")
    np.testing.assert_allclose(np.array(smp.ddim_coefficients(lam_t, lam_s, eta), np.float64),
                               ref, rtol=1e-5, err_msg=f"step {i} of {n}, eta {eta}")


def test_ddim_update_matches_the_reference_with_random_inputs():
  lam_t, lam_s = smp.step_logsnrs(CosineSchedule(), 4, 3)
  keys = jax.random.split(jax.random.key(2), 3)
  x_hat, eps_hat = (jax.random.normal(k, (2, 4, 4, 1)) for k in keys[:2])
  got = smp.ddim_update(jnp.zeros_like(x_hat), x_hat, eps_hat, lam_t, lam_s, eta=1.0, rng=keys[2])
  a, e, c = _ddim_coefficients_reference(lam_t, lam_s, 1.0)
  noise = np.asarray(jax.random.normal(keys[2], x_hat.shape), np.float64)
  ref = a * np.asarray(x_hat, np.float64) + e * np.asarray(eps_hat, np.float64) + c * noise
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_clipping_recomputes_eps():
  z = jnp.array([[3.0, -0.2]])
  alpha, sigma = alpha_sigma(jnp.array([0.5]))
  x_hat, eps_hat = smp.clip_prediction(jnp.array([[2.0, -0.5]]), z, alpha, sigma)
  np.testing.assert_allclose(x_hat, [[1.0, -0.5]])
  np.testing.assert_allclose(p.broadcast_to(alpha, z) * x_hat + p.broadcast_to(sigma, z) * eps_hat, z,
                             atol=1e-6)


def test_one_compilation_per_shape_and_step_count():
  traces = []

  def denoise_fn(z, logsnr, cond):
    traces.append(z.shape)
    return 0.1 * z

  run = jax.jit(lambda rng, n: smp.sample(denoise_fn, rng, (2, 3, 4, 4, 1),
                                          config=smp.SamplerConfig(num_steps=n)), static_argnums=1)
  for seed in range(3):
    run(jax.random.key(seed), 12).block_until_ready()
  assert len(traces) == 1  # body traced once, not per step and not per call
  run(jax.random.key(0), 6)
  assert len(traces) == 2


def test_sharded_batch_gives_the_same_samples(devices):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.NamedSharding(mesh, jax.P("data"))
  denoise_fn = oracle_for_x_fn(lambda z, a, s: jnp.tanh(z) * a, "v")
  cfg = smp.SamplerConfig("ancestral", num_steps=8)
  predict_fn = smp.make_predict_fn(denoise_fn, None)
  loop = lambda z, rng: smp.sample_loop(predict_fn, z, rng, schedule=CosineSchedule(), config=cfg)
  z = jax.random.normal(jax.random.key(0), (16, 2, 4, 4, 1))
  ref = jax.jit(loop)(z, jax.random.key(1))
  out = jax.jit(loop, in_shardings=(sharding, None), out_shardings=sharding)(
      jax.device_put(z, sharding), jax.random.key(1))
  assert out.sharding.is_equivalent_to(sharding, out.ndim)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_chunked_loop_equals_whole_loop():
  predict_fn = smp.make_predict_fn(lambda z, logsnr, c: 0.2 * z, None)
  cfg = smp.SamplerConfig("ancestral", num_steps=10, gamma=0.1)
  kw = dict(schedule=CosineSchedule(), config=cfg)
  z = jax.random.normal(jax.random.key(0), (2, 2, 3, 3, 1))
  whole = smp.sample_loop(predict_fn, z, jax.random.key(3), **kw)
  chunk = jax.jit(lambda z, a, b: smp.sample_loop(predict_fn, z, jax.random.key(3), start=a, stop=b, **kw))
  part = z
  for a in range(0, 10, 4):
    part = chunk(part, a, min(a + 4, 10))
  np.testing.assert_allclose(part, whole, atol=1e-6)


def _counting_denoise_fn(calls):
  """0.2 z, counting its executions (not its traces) with a debug callback."""

  def denoise_fn(z, logsnr, cond):
    jax.debug.callback(lambda: calls.append(1))
    return 0.2 * z

  return denoise_fn


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
@pytest.mark.parametrize("n,k", [(1, 2), (5, 3)])
def test_corrector_does_not_run_after_the_last_step(sampler, n, k):
  # The last step returns x_hat, so correcting its z_s only wasted k denoiser calls: a run costs
  # N + (N - 1) k calls, not N + N k.
  calls = []
  cfg = smp.SamplerConfig(sampler, num_steps=n, eta=0.5, corrector_steps=k)
  denoise_fn = _counting_denoise_fn(calls)
  run = jax.jit(lambda rng: smp.sample(denoise_fn, rng, (2, 2, 3, 3, 1), config=cfg))
  run(jax.random.key(0)).block_until_ready()
  jax.effects_barrier()
  assert len(calls) == n + (n - 1) * k


def _reference_loop(predict_fn, z, rng, schedule, cfg):
  """The predictor-corrector loop written out step by step, correcting every step (also the last).

  Returns the state before the last step and the final x_hat.
  """
  n = cfg.num_steps
  for i in range(n - 1, -1, -1):
    logsnr_t, logsnr_s = smp.step_logsnrs(schedule, n, i)
    rng_step, rng_corr = jax.random.split(jax.random.fold_in(rng, i))
    x_hat, eps_hat = predict_fn(z, logsnr_t)
    if i == 0:
      return z, x_hat
    if cfg.sampler == "ddim":
      z = smp.ddim_update(z, x_hat, eps_hat, logsnr_t, logsnr_s, eta=cfg.eta, rng=rng_step)
    else:
      z = smp.ancestral_update(z, x_hat, logsnr_t, logsnr_s, gamma=cfg.gamma, rng=rng_step)
    z = smp.langevin_corrector(predict_fn, z, logsnr_s, rng_corr, num_steps=cfg.corrector_steps,
                               delta=cfg.corrector_delta)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_skipping_the_last_corrector_keeps_the_samples(sampler):
  n = 6
  cfg = smp.SamplerConfig(sampler, num_steps=n, eta=0.7, gamma=0.2, corrector_steps=2)
  schedule = CosineSchedule()
  predict_fn = smp.make_predict_fn(oracle_for_x_fn(lambda z, a, s: jnp.tanh(z) * a, "v"), None)
  z = jax.random.normal(jax.random.key(0), (2, 2, 3, 3, 1))
  rng = jax.random.key(1)
  z_before_last, x_last = _reference_loop(predict_fn, z, rng, schedule, cfg)
  loop = jax.jit(lambda z, a, b: smp.sample_loop(predict_fn, z, rng, schedule=schedule, config=cfg,
                                                 start=a, stop=b))
  z_mid = loop(z, 0, n - 1)
  np.testing.assert_allclose(z_mid, z_before_last, atol=1e-5)
  np.testing.assert_allclose(loop(z_mid, n - 1, n), x_last, atol=1e-5)
  np.testing.assert_allclose(loop(z, 0, n), x_last, atol=1e-5)


def test_post_step_fn_gets_its_own_rng_stream():
  # Pinned: the post-step stream's offset is part of the samples' identity.
  assert smp.POST_STEP_STREAM == 7919
  seen = {}

  def post_step_fn(z, logsnr_s, rng, is_last):
    jax.debug.callback(lambda i, k: seen.__setitem__(int(i), np.asarray(k)),
                       jnp.round(logsnr_s).astype(jnp.int32), jax.random.key_data(rng))
    return z

  rng = jax.random.key(3)
  predict_fn = smp.make_predict_fn(lambda z, logsnr, c: 0.1 * z, None)
  smp.sample_loop(predict_fn, jnp.zeros((1, 2)), rng, schedule=CosineSchedule(),
                  config=smp.SamplerConfig(num_steps=2), post_step_fn=post_step_fn)
  jax.effects_barrier()
  for i, logsnr_s in enumerate((20, 0)):  # step i ends at u_i = i / 2
    want = jax.random.fold_in(jax.random.fold_in(rng, i), smp.POST_STEP_STREAM)
    np.testing.assert_array_equal(seen[logsnr_s], jax.random.key_data(want))


def test_bad_sampler_config_raises():
  with pytest.raises(ValueError, match="unknown sampler"):
    smp.SamplerConfig("euler")
  with pytest.raises(ValueError, match="eta"):
    smp.SamplerConfig(eta=1.5)
