"""DDIM, ancestral and DPM-Solver++(2M) samplers as pure functions of a denoiser (docs/MATH.md section 5).

Grid u_i = i / N; each step goes from t = u_{i+1} to s = u_i, i = N-1 ... 0; the last step returns x_hat.
The whole loop is one `lax.fori_loop`, so N is a compile-time constant, the body is traced once, and a
batch sharded over a mesh stays sharded. The pieces are exposed so guidance and frame replacement
compose without copying the loop:

  predict_fn(z, logsnr) -> (x_hat, eps_hat)       `make_predict_fn` builds it from a denoise_fn;
                                                   guidance.py wraps it (reconstruction guidance).
  post_step_fn(z_s, logsnr_s, rng, is_last) -> z_s  e.g. guidance.replace_known_frames.
  sampler_step(...)                                one update t -> s.
  sample_loop(...)                                 steps [start, stop) of the loop (chunks for progress).
  sample(...)                                      the whole thing from noise.

The loop's carry is the latent z itself for the one-step samplers (DDIM, ancestral); a multistep
solver (DPM-Solver++(2M)) also carries the previous step's x_hat, as the tuple (z, x_prev).
`initial_carry(z, config)` makes the carry, `carry_sample(carry)` reads z (x after the last step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vdm_jax.diffusion import parameterization as param
from vdm_jax.diffusion.protocols import DenoiseFn
from vdm_jax.diffusion.schedule import CosineSchedule, alpha_sigma, angle_from_logsnr

PredictFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
PostStepFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
SAMPLERS = ("ddim", "ancestral", "dpmpp2m")
MULTISTEP_SAMPLERS = ("dpmpp2m",)  # samplers whose loop carry is (z, x_prev)
Carry = jax.Array | tuple[jax.Array, jax.Array]
# Step i's key is fold_in(rng, i); it is split into the update's and the corrector's keys, and
# post_step_fn gets fold_in(step key, POST_STEP_STREAM), a separate stream (a prime far from any
# step or corrector index). Changing it changes every sample drawn with a post_step_fn.
POST_STEP_STREAM = 7919


def _field(default: Any, help_text: str) -> Any:
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How to sample.

  The one definition of sampler settings: the config's `sample` section inherits these fields,
  generation.GenerateOptions holds one, and sample.py makes a flag of each field (help: `metadata`).
  """
  sampler: str = _field("ddim", "Sampler: ddim, ancestral or dpmpp2m (DPM-Solver++(2M), "
                        "deterministic second-order multistep for 10-25 steps; eta, gamma unused).")
  num_steps: int = _field(64, "Sampler steps N (denoiser evaluations without the corrector).")
  eta: float = _field(0.0, "DDIM stochasticity in [0, 1]; 0 deterministic, 1 = ancestral with the "
                      "small variance.")
  gamma: float = _field(0.0, "Ancestral variance interpolation small^(1-gamma) large^gamma in "
                        "[0, 1] (VDM: 0.1 UCF-101, 0 BAIR).")
  clip_x: bool = _field(True, "Clip the predicted x to [-1, 1] at every step.")
  corrector_steps: int = _field(0, "Langevin corrector steps after each step but the last (VDM's "
                                "predictor-corrector).")
  corrector_delta: float = _field(0.1, "Langevin corrector step size delta.")

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLERS}")
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"DDIM eta must be in [0, 1], got {self.eta}")
    if not 0.0 <= self.gamma <= 1.0:
      raise ValueError(f"ancestral gamma must be in [0, 1], got {self.gamma}")
    if self.corrector_steps < 0 or self.corrector_delta <= 0:
      raise ValueError("corrector_steps must be >= 0 and corrector_delta > 0, got "
                       f"{self.corrector_steps}, {self.corrector_delta}")


def clip_prediction(x_hat: jax.Array, z: jax.Array, alpha: jax.Array,
                    sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Clip x_hat to [-1, 1] and recompute eps_hat so that z = alpha x_hat + sigma eps_hat still holds."""
  x_hat = jnp.clip(x_hat, -1.0, 1.0)
  return x_hat, param.eps_from_x(z, x_hat, alpha, sigma)


def make_predict_fn(denoise_fn: DenoiseFn, cond: Any = None,
                    *, prediction: str = "v", clip_x: bool = True) -> PredictFn:
  """(z, logsnr) -> (x_hat, eps_hat) from a denoise_fn(z, logsnr [B], cond) of kind `prediction`."""
  param.check_prediction(prediction)

  def predict_fn(z, logsnr):
    logsnr = jnp.broadcast_to(logsnr, z.shape[:1])
    alpha, sigma = alpha_sigma(logsnr)
    pred = denoise_fn(z, logsnr, cond).astype(jnp.float32)
    x_hat, eps_hat = param.to_x_eps(pred, z, alpha, sigma, prediction)
    if clip_x:
      x_hat, eps_hat = clip_prediction(x_hat, z, alpha, sigma)
    return x_hat, eps_hat

  return predict_fn


def ddim_coefficients(logsnr_t: jax.Array, logsnr_s: jax.Array,
                      eta: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Coefficients of a stochastic DDIM step t -> s: z_s = alpha_s x_hat + e eps_hat + c noise.

  With r = exp(lambda_t - lambda_s) (docs/MATH.md section 5):
    c^2 = eta^2 (1 - r) sigma_s^2,
    e = sqrt(sigma_s^2 - c^2) = sigma_s sqrt((1 - eta^2) + eta^2 r).
  The difference sigma_s^2 - c^2 cancels catastrophically in float32 when eta ~ 1 and r is tiny
  (the first step from noise: r = e^-20 with two steps), giving e = 0 instead of ~3e-5; the
  factored form has no cancellation, and 1 - r comes from expm1.

  Args:
    logsnr_t: lambda_t, the current (lower) log-SNR.
    logsnr_s: lambda_s > lambda_t, the target log-SNR.
    eta: DDIM stochasticity in [0, 1] (a Python float).

  Returns:
    (alpha_s, e, c): the x_hat and eps_hat coefficients and the noise standard deviation.
  """
  alpha_s, sigma_s = alpha_sigma(logsnr_s)
  log_r = jnp.asarray(logsnr_t, jnp.float32) - logsnr_s
  eps_coef = sigma_s * jnp.sqrt((1.0 - eta**2) + eta**2 * jnp.exp(log_r))
  noise_std = eta * sigma_s * jnp.sqrt(-jnp.expm1(log_r))
  return alpha_s, eps_coef, noise_std


def ddim_update(z_t: jax.Array, x_hat: jax.Array, eps_hat: jax.Array, logsnr_t: jax.Array,
                logsnr_s: jax.Array, *, eta: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
  """One DDIM step t -> s.

  eta = 0: the angular form z_s = cos(phi_s - phi_t) z_t + sin(phi_s - phi_t) v_hat with v_hat from
  (x_hat, eps_hat), which equals alpha_s x_hat + sigma_s eps_hat (also when x_hat was clipped).
  eta > 0: z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c noise,
  c^2 = eta^2 (1 - r) sigma_s^2, with the coefficients from `ddim_coefficients`.
  """
  alpha_t, sigma_t = alpha_sigma(logsnr_t)
  if eta == 0.0:
    delta = angle_from_logsnr(logsnr_s) - angle_from_logsnr(logsnr_t)
    v_hat = param.v_from_x_eps(x_hat, eps_hat, alpha_t, sigma_t)
    return jnp.cos(delta) * z_t + jnp.sin(delta) * v_hat
  x_coef, eps_coef, noise_std = ddim_coefficients(logsnr_t, logsnr_s, eta)
  noise = jax.random.normal(rng, z_t.shape, z_t.dtype)
  return x_coef * x_hat + eps_coef * eps_hat + noise_std * noise


def ancestral_update(z_t: jax.Array, x_hat: jax.Array, logsnr_t: jax.Array, logsnr_s: jax.Array,
                     *, gamma: float, rng: jax.Array) -> jax.Array:
  """One ancestral (DDPM) step t -> s with VDM's interpolated variance.

  r = e^{lambda_t - lambda_s}; mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x_hat;
  variance = ((1 - r) sigma_s^2)^(1 - gamma) ((1 - r) sigma_t^2)^gamma.
  """
  alpha_t, sigma_t = alpha_sigma(logsnr_t)
  alpha_s, sigma_s = alpha_sigma(logsnr_s)
  r = jnp.exp(logsnr_t - logsnr_s)
  one_minus_r = -jnp.expm1(logsnr_t - logsnr_s)
  mean = r * (alpha_s / alpha_t) * z_t + one_minus_r * alpha_s * x_hat
  log_var = jnp.log(one_minus_r) + 2.0 * ((1.0 - gamma) * jnp.log(sigma_s) + gamma * jnp.log(sigma_t))
  return mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, z_t.shape, z_t.dtype)


def dpmpp2m_update(z_t: jax.Array, x_hat: jax.Array, x_prev: jax.Array, logsnr_prev: jax.Array,
                   logsnr_t: jax.Array, logsnr_s: jax.Array, first: jax.Array) -> jax.Array:
  """One DPM-Solver++(2M) step t -> s (Lu et al. 2022, data prediction, multistep second order).

  In the solver's time lambda = logsnr / 2 (log alpha / sigma), with h = lambda_s - lambda_t and
  h_prev = lambda_t - lambda_prev the previous step's:
    D = x_hat + (x_hat - x_prev) h / (2 h_prev)      (D = x_hat on the first step: first order)
    z_s = (sigma_s / sigma_t) z_t - alpha_s expm1(-h) D
  With D = x_hat this is DDIM (eta 0): alpha_s x_hat + sigma_s eps_hat.

  Args:
    z_t: the current latent.
    x_hat: the x prediction at (z_t, lambda_t).
    x_prev: the x prediction of the previous step (ignored where `first`).
    logsnr_prev, logsnr_t, logsnr_s: log-SNR of the previous step's start, of t and of s.
    first: bool, possibly traced: no previous prediction (first-order step).
  """
  _, sigma_t = alpha_sigma(logsnr_t)
  alpha_s, sigma_s = alpha_sigma(logsnr_s)
  h = 0.5 * (jnp.asarray(logsnr_s, jnp.float32) - logsnr_t)
  h_prev = jnp.where(first, 1.0, 0.5 * (jnp.asarray(logsnr_t, jnp.float32) - logsnr_prev))
  d = jnp.where(first, x_hat, x_hat + (h / (2.0 * h_prev)) * (x_hat - x_prev))
  return (sigma_s / sigma_t) * z_t - alpha_s * jnp.expm1(-h) * d


def langevin_corrector(predict_fn: PredictFn, z_s: jax.Array, logsnr_s: jax.Array, rng: jax.Array,
                       *, num_steps: int, delta: float) -> jax.Array:
  """z <- z - 0.5 delta sigma_s eps_hat(z) + sqrt(delta) sigma_s noise, `num_steps` times (VDM)."""
  _, sigma_s = alpha_sigma(logsnr_s)
  for k in range(num_steps):
    _, eps_hat = predict_fn(z_s, logsnr_s)
    noise = jax.random.normal(jax.random.fold_in(rng, k), z_s.shape, z_s.dtype)
    z_s = z_s - 0.5 * delta * sigma_s * eps_hat + jnp.sqrt(delta) * sigma_s * noise
  return z_s


def sampler_step(predict_fn: PredictFn, z_t: jax.Array, logsnr_t: jax.Array, logsnr_s: jax.Array,
                 rng: jax.Array, config: SamplerConfig, is_last: jax.Array) -> jax.Array:
  """One update t -> s (docs/MATH.md section 5); returns x_hat instead of z_s when `is_last`.

  The Langevin corrector runs only when not `is_last`: the last step discards z_s, so its
  `corrector_steps` denoiser calls would be wasted. A `lax.cond` skips them at run time with
  `is_last` traced (inside `vmap`, cond becomes a select and both branches run again).

  Args:
    predict_fn: (z, logsnr) -> (x_hat, eps_hat).
    z_t: the current latent.
    logsnr_t: lambda_t of `z_t`.
    logsnr_s: lambda_s > lambda_t of the step's target.
    rng: this step's key (split into the update's and the corrector's).
    config: the sampler.
    is_last: bool, possibly traced: this is the final step.

  Returns:
    z_s, or x_hat when `is_last`.
  """
  if config.sampler in MULTISTEP_SAMPLERS:
    raise ValueError(f"{config.sampler} is multistep: use multistep_step (or sample_loop)")
  rng_step, rng_corr = jax.random.split(rng)
  x_hat, eps_hat = predict_fn(z_t, logsnr_t)
  if config.sampler == "ddim":
    z_s = ddim_update(z_t, x_hat, eps_hat, logsnr_t, logsnr_s, eta=config.eta, rng=rng_step)
  else:
    z_s = ancestral_update(z_t, x_hat, logsnr_t, logsnr_s, gamma=config.gamma, rng=rng_step)
  return _finish_step(predict_fn, x_hat, z_s, logsnr_s, rng_corr, config, is_last)


def multistep_step(predict_fn: PredictFn, carry: tuple[jax.Array, jax.Array], logsnr_prev: jax.Array,
                   logsnr_t: jax.Array, logsnr_s: jax.Array, rng: jax.Array, config: SamplerConfig,
                   is_first: jax.Array, is_last: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One DPM-Solver++(2M) update of the carry (z_t, x_prev) -> (z_s, x_hat); z_s = x_hat when last.

  The corrector (if any) runs after every step but the last, as in `sampler_step`.
  """
  z_t, x_prev = carry
  _, rng_corr = jax.random.split(rng)
  x_hat, _ = predict_fn(z_t, logsnr_t)
  z_s = dpmpp2m_update(z_t, x_hat, x_prev.astype(x_hat.dtype), logsnr_prev, logsnr_t, logsnr_s,
                       is_first)
  z_s = _finish_step(predict_fn, x_hat, z_s.astype(z_t.dtype), logsnr_s, rng_corr, config, is_last)
  return z_s, x_hat.astype(x_prev.dtype)


def _finish_step(predict_fn: PredictFn, x_hat: jax.Array, z_s: jax.Array, logsnr_s: jax.Array,
                 rng_corr: jax.Array, config: SamplerConfig, is_last: jax.Array) -> jax.Array:
  """x_hat when `is_last`, else z_s after the Langevin corrector (skipped at run time when last)."""
  if not config.corrector_steps:
    return jnp.where(is_last, x_hat, z_s)

  def correct():
    return langevin_corrector(predict_fn, z_s, logsnr_s, rng_corr,
                              num_steps=config.corrector_steps, delta=config.corrector_delta)

  return jax.lax.cond(is_last, lambda: x_hat.astype(z_s.dtype), correct)


def step_logsnrs(schedule: CosineSchedule, num_steps: int,
                 step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(lambda_t, lambda_s) for step index i (t = u_{i+1}, s = u_i, u_i = i / N)."""
  step = jnp.asarray(step, jnp.float32)
  return schedule.logsnr((step + 1.0) / num_steps), schedule.logsnr(step / num_steps)


def sample_loop(predict_fn: PredictFn, z: Carry, rng: jax.Array, *, schedule: CosineSchedule,
                config: SamplerConfig, start: int | jax.Array = 0, stop: int | jax.Array | None = None,
                post_step_fn: PostStepFn | None = None) -> Carry:
  """Run loop iterations [start, stop) of N = config.num_steps (iteration k is step i = N - 1 - k).

  `start`/`stop` may be traced, so a jitted caller can run the loop in chunks (to show progress)
  with one compilation. Iteration N - 1 returns x_hat. `z` is the loop carry (`initial_carry`): the
  latent for DDIM and ancestral, (z, x_prev) for dpmpp2m; the same kind is returned.
  """
  n = config.num_steps
  stop = n if stop is None else stop
  multistep = config.sampler in MULTISTEP_SAMPLERS
  if multistep != isinstance(z, tuple):
    raise ValueError(f"sample_loop of {config.sampler!r} got a carry of the wrong kind; start from "
                     "initial_carry(z, config) and read the result with carry_sample")

  def body(k, carry):
    i = n - 1 - k
    logsnr_t, logsnr_s = step_logsnrs(schedule, n, i)
    step_rng = jax.random.fold_in(rng, i)
    is_last = i == 0
    if multistep:  # the previous step started at u_{i+2} (clamped on the first step, unused there)
      logsnr_prev = schedule.logsnr(jnp.minimum(i + 2, n).astype(jnp.float32) / n)
      z, x_prev = multistep_step(predict_fn, carry, logsnr_prev, logsnr_t, logsnr_s, step_rng,
                                 config, i == n - 1, is_last)
    else:
      z = sampler_step(predict_fn, carry, logsnr_t, logsnr_s, step_rng, config, is_last)
    if post_step_fn is not None:
      z = post_step_fn(z, logsnr_s, jax.random.fold_in(step_rng, POST_STEP_STREAM), is_last)
    return (z, x_prev) if multistep else z

  return jax.lax.fori_loop(start, stop, body, z)


def initial_carry(z: jax.Array, config: SamplerConfig) -> Carry:
  """The loop carry at step 0 from the initial latent: z, or (z, zeros) for a multistep sampler."""
  return (z, jnp.zeros_like(z)) if config.sampler in MULTISTEP_SAMPLERS else z


def carry_sample(carry: Carry) -> jax.Array:
  """The latent (x after the last step) of a loop carry."""
  return carry[0] if isinstance(carry, tuple) else carry


def initial_noise(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """z_1 ~ N(0, I) (alpha(1) ~ 4.5e-5 at lambda_min = -20, so the data term is negligible)."""
  return jax.random.normal(rng, shape, jnp.float32)


def sample(denoise_fn: DenoiseFn, rng: jax.Array,
           shape: tuple[int, ...], *, cond: Any = None, schedule: CosineSchedule = CosineSchedule(),
           config: SamplerConfig = SamplerConfig(), prediction: str = "v") -> jax.Array:
  """Draw samples x [shape] from noise with `denoise_fn(z, logsnr [B], cond) -> prediction`."""
  rng_init, rng_loop = jax.random.split(rng)
  predict_fn = make_predict_fn(denoise_fn, cond, prediction=prediction, clip_x=config.clip_x)
  carry = initial_carry(initial_noise(rng_init, shape), config)
  return carry_sample(sample_loop(predict_fn, carry, rng_loop, schedule=schedule, config=config))
