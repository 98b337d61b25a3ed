"""Typed diffusion settings: the `diffusion` section of a config."""

from __future__ import annotations

import dataclasses

from vdm_jax.diffusion.losses import WEIGHTINGS
from vdm_jax.diffusion.parameterization import PREDICTIONS
from vdm_jax.diffusion.schedule import LOGSNR_SAMPLING, TIME_SAMPLING, CosineSchedule, resolution_shift


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """How data is noised and what the network predicts.

  Attributes:
    logsnr_min, logsnr_max: the truncated cosine schedule's range (VDM: -20, 20).
    shift: log-SNR shift added everywhere; ignored when shift_reference_size > 0.
    shift_reference_size: if > 0, shift = 2 log(reference / resolution) (simple diffusion).
    prediction: "v" (default; no temporal colour shift), "eps" or "x".
    weighting: loss weighting, one of WEIGHTINGS ("v" = plain v-MSE).
    min_snr_gamma: gamma of "min_snr" weighting.
    time_sampling: "uniform" or "low_discrepancy".
    logsnr_sampling: "schedule" or "normal" (SVD/EDM-style, with p_mean, p_std).
  """
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  shift: float = 0.0
  shift_reference_size: int = 0
  prediction: str = "v"
  weighting: str = "v"
  min_snr_gamma: float = 5.0
  time_sampling: str = "uniform"
  logsnr_sampling: str = "schedule"
  p_mean: float = -1.2
  p_std: float = 1.2

  def __post_init__(self):
    checks = {"prediction": PREDICTIONS, "weighting": WEIGHTINGS, "time_sampling": TIME_SAMPLING,
              "logsnr_sampling": LOGSNR_SAMPLING}
    for name, allowed in checks.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"diffusion.{name}={getattr(self, name)!r} is unknown; use one of {allowed}")
    CosineSchedule(self.logsnr_min, self.logsnr_max)  # validates the range

  def schedule(self, resolution: int | None = None) -> CosineSchedule:
    """The noise schedule, with the resolution shift applied when configured."""
    shift = self.shift
    if self.shift_reference_size > 0:
      if resolution is None:
        raise ValueError("diffusion.shift_reference_size needs the data resolution")
      shift = resolution_shift(resolution, self.shift_reference_size)
    return CosineSchedule(self.logsnr_min, self.logsnr_max, shift)

  def loss_kwargs(self) -> dict:
    """Keyword arguments of `diffusion_loss` (everything but the schedule)."""
    return dict(prediction=self.prediction, weighting=self.weighting, min_snr_gamma=self.min_snr_gamma,
                time_sampling=self.time_sampling, logsnr_sampling=self.logsnr_sampling,
                p_mean=self.p_mean, p_std=self.p_std)
