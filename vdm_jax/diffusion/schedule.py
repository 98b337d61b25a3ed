"""The truncated continuous cosine schedule in log-SNR, its angle, shifts and training-time sampling.

docs/MATH.md sections 1-2 (VDM; progressive distillation, Salimans & Ho 2022):

    b = arctan(exp(-lambda_max / 2)),  a = arctan(exp(-lambda_min / 2)) - b
    lambda(u) = -2 log tan(a u + b),   u in [0, 1]

so the angle phi(u) = arctan(sigma / alpha) = a u + b is linear in u. alpha^2 = sigmoid(lambda),
sigma^2 = sigmoid(-lambda). Everything here is a pure jnp function of arrays.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

TIME_SAMPLING = ("uniform", "low_discrepancy")
LOGSNR_SAMPLING = ("schedule", "normal")


def _check_range(logsnr_min: float, logsnr_max: float) -> None:
  if not logsnr_min < logsnr_max:
    raise ValueError(
        f"log-SNR range must satisfy logsnr_min < logsnr_max, got [{logsnr_min}, {logsnr_max}]; "
        "VDM uses [-20, 20].")


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
  """Truncated continuous cosine schedule, optionally shifted toward more noise.

  Attributes:
    logsnr_min: log-SNR at u = 1 (most noise) before the shift.
    logsnr_max: log-SNR at u = 0 (least noise) before the shift.
    shift: added to lambda(u) everywhere; `resolution_shift(d)` gives simple diffusion's
      2 log(d_ref / d) (negative for d > d_ref: more noise).
  """
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  shift: float = 0.0

  def __post_init__(self):
    _check_range(self.logsnr_min, self.logsnr_max)

  @property
  def _b(self) -> float:
    return math.atan(math.exp(-0.5 * self.logsnr_max))

  @property
  def _a(self) -> float:
    return math.atan(math.exp(-0.5 * self.logsnr_min)) - self._b

  @property
  def _c(self) -> float:
    """pi/2 - a - b = arctan(exp(lambda_min / 2)): the complementary angle pi/2 - phi at u = 1."""
    return math.atan(math.exp(0.5 * self.logsnr_min))

  def angle(self, u: jax.Array) -> jax.Array:
    """phi(u) = a u + b of the unshifted schedule (radians), any shape."""
    return self._a * jnp.asarray(u, jnp.float32) + self._b

  def logsnr(self, u: jax.Array) -> jax.Array:
    """lambda(u) = -2 log tan(a u + b) + shift, any shape, float32 (docs/MATH.md section 2).

    float32 tan is inaccurate near pi/2 (phi(1) = pi/2 - 4.5e-5 at lambda_min = -20 puts lambda(1)
    off by 1.1e-3), so for phi > pi/4 this uses tan(phi) = 1 / tan(pi/2 - phi):
    lambda = 2 log tan(psi), psi = pi/2 - phi = c + a (1 - u), c = arctan(exp(lambda_min / 2)).
    psi sums two positive terms and 1 - u is exact for u >= 1/2, so nothing cancels; both
    branches are evaluated (finite on [0, 1]) and `jnp.where` picks one, so it traces and jits.

    Args:
      u: times in [0, 1], any shape.

    Returns:
      lambda(u) + shift, float32, the shape of `u`.
    """
    u = jnp.asarray(u, jnp.float32)
    phi = self.angle(u)
    below = -2.0 * jnp.log(jnp.tan(phi))
    above = 2.0 * jnp.log(jnp.tan(self._c + self._a * (1.0 - u)))
    return jnp.where(phi > 0.25 * math.pi, above, below) + self.shift

  def time_from_logsnr(self, logsnr: jax.Array) -> jax.Array:
    """Inverse of `logsnr`: u(lambda) = (arctan(exp(-(lambda - shift) / 2)) - b) / a."""
    phi = angle_from_logsnr(jnp.asarray(logsnr, jnp.float32) - self.shift)
    return (phi - self._b) / self._a

  @property
  def logsnr_bounds(self) -> tuple[float, float]:
    """(lowest, highest) log-SNR the schedule reaches, shift included."""
    return self.logsnr_min + self.shift, self.logsnr_max + self.shift


def resolution_shift(size: int, reference_size: int = 64) -> float:
  """Simple diffusion's log-SNR shift 2 log(d_ref / d) for a spatial size d.

  See docs/MATH.md section 2.
  """
  if size <= 0 or reference_size <= 0:
    raise ValueError(f"sizes must be positive, got size={size}, reference_size={reference_size}")
  return 2.0 * math.log(reference_size / size)


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
  """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)); exact alpha^2 + sigma^2 = 1."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def angle_from_logsnr(logsnr: jax.Array) -> jax.Array:
  """phi = arctan(sigma / alpha) = arctan(exp(-lambda / 2)), in (0, pi/2)."""
  return jnp.arctan(jnp.exp(-0.5 * jnp.asarray(logsnr, jnp.float32)))


def noise_level_from_logsnr(logsnr: jax.Array) -> jax.Array:
  """The network's noise input: the normalised angle phi / (pi / 2) in [0, 1] (1 = pure noise)."""
  return angle_from_logsnr(logsnr) / (0.5 * math.pi)


def sample_times(rng: jax.Array, batch_size: int, method: str = "uniform") -> jax.Array:
  """Per-example training times u [B] in [0, 1).

  Args:
    rng: PRNG key.
    batch_size: B.
    method: "uniform" (i.i.d. U(0, 1)) or "low_discrepancy" (u_i = (u_0 + i / B) mod 1, from Variational
      Diffusion Models, Kingma et al. 2021: not the Video Diffusion Models this package calls VDM).
  """
  if method == "uniform":
    return jax.random.uniform(rng, (batch_size,))
  if method == "low_discrepancy":
    u0 = jax.random.uniform(rng, ())
    return jnp.mod(u0 + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
  raise ValueError(f"unknown time sampling {method!r}; choose one of {TIME_SAMPLING}")


def sample_training_logsnr(rng: jax.Array, batch_size: int, schedule: CosineSchedule, *,
                           time_sampling: str = "uniform", logsnr_sampling: str = "schedule",
                           p_mean: float = -1.2, p_std: float = 1.2) -> jax.Array:
  """Per-example log-SNR [B] for a training step.

  "schedule": lambda(u) with u from `sample_times`. "normal" (SVD/EDM-style shift):
  lambda ~ N(-2 p_mean, (2 p_std)^2), i.e. EDM's log sigma ~ N(p_mean, p_std^2), clipped to the
  schedule's bounds so samplers and conversions stay finite.
  """
  if logsnr_sampling == "schedule":
    return schedule.logsnr(sample_times(rng, batch_size, time_sampling))
  if logsnr_sampling == "normal":
    lo, hi = schedule.logsnr_bounds
    logsnr = -2.0 * p_mean + 2.0 * p_std * jax.random.normal(rng, (batch_size,))
    return jnp.clip(logsnr, lo, hi)
  raise ValueError(f"unknown log-SNR sampling {logsnr_sampling!r}; choose one of {LOGSNR_SAMPLING}")
