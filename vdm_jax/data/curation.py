"""Curation of a folder's clips (Stable Video Diffusion's lesson: the data you drop matters).

Pure numpy on decoded uint8 frames [L, H, W, 3]; `video_files.decode_folder` runs it:

- shot cuts: per-frame RGB histograms (16 bins a channel); a cut between frames t-1 and t when
  their total-variation distance is at least `cut_threshold` and `CUT_RATIO` times the median
  distance of the neighbouring frame pairs (so a fast pan or a flicker does not count). The
  decoder finds them among all the source's frames and moves them onto the kept frames
  (`map_cuts`): at a lowered frame rate, fast motion between kept frames looks like a cut.
- motion: a clip's mean normal-flow speed, |dI/dt| / |grad I| weighted by |grad I|^2, of blurred
  grey frames resized to 64 x 64, in pixels per second at that size (times the clip's fps, so
  "static" means the same at any --fps or --frame_stride; 0 for a still image).
- near duplicates: DCT perceptual hashes (64 bits) of a clip's first, middle and last frames; a
  clip whose mean Hamming distance to a kept clip of another shot is at most `dedup_max_bits` is
  a duplicate (two clips of one shot are its continuation, not copies of each other).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.fft
import scipy.ndimage

from vdm_jax.metrics import video_io

HIST_BINS = 16
CUT_THRESHOLD = 0.15     # the default least histogram distance of a cut
CUT_SIZE = 64            # frames are subsampled to about this short side for cut detection
CUT_RATIO = 3.0          # a cut's distance over the median of its neighbours' distances, at least
CUT_WINDOW = 8           # neighbour frame pairs on each side for that median
MOTION_SIZE = 64         # frames are resized to this side to measure motion
MOTION_BLUR = 1.0        # Gaussian sigma (pixels at MOTION_SIZE) before the gradients
HASH_SIZE, HASH_BITS_SIDE = 32, 8


@dataclasses.dataclass(frozen=True)
class CurationConfig:
  """What to drop and split, and with which thresholds (the defaults keep everything).

  Attributes:
    split_at_cuts: split each video into shots at detected cuts; no clip spans a cut.
    cut_threshold: least histogram distance (total variation, in [0, 1]) of a cut.
    drop_static: drop clips whose motion score is below min_motion.
    min_motion: motion threshold, pixels per second at 64 x 64 (`motion_score`).
    dedup: drop clips that nearly duplicate a clip kept before them.
    dedup_max_bits: a duplicate's mean Hamming distance over its key frames' 64-bit hashes, at most.
  """
  split_at_cuts: bool = False
  cut_threshold: float = CUT_THRESHOLD
  drop_static: bool = False
  min_motion: float = 2.5
  dedup: bool = False
  dedup_max_bits: float = 10.0

  def __post_init__(self):
    if not 0.0 < self.cut_threshold <= 1.0:
      raise ValueError(f"cut_threshold must be in (0, 1], got {self.cut_threshold}.")
    if self.min_motion < 0 or not 0 <= self.dedup_max_bits < 64:
      raise ValueError("min_motion must be >= 0 and dedup_max_bits in [0, 64), got "
                       f"{self.min_motion} and {self.dedup_max_bits}.")

  @property
  def active(self) -> bool:
    return self.split_at_cuts or self.drop_static or self.dedup


def color_histograms(frames: np.ndarray) -> np.ndarray:
  """Per-frame RGB histograms, HIST_BINS bins a channel: uint8 [L, H, W, 3] -> float [L, 3 * bins].

  Each channel's histogram sums to 1 / 3, so a frame's sums to 1.
  """
  n, h, w, c = frames.shape
  bins = (frames.reshape(n, h * w, c).astype(np.int64) * HIST_BINS) // 256  # [L, HW, C]
  bins = bins + np.arange(c) * HIST_BINS + np.arange(n)[:, None, None] * (c * HIST_BINS)
  counts = np.bincount(bins.ravel(), minlength=n * c * HIST_BINS)
  return counts.reshape(n, c * HIST_BINS) / float(h * w * c)


def detect_cuts(frames: np.ndarray, threshold: float = CUT_THRESHOLD) -> list[int]:
  """Frame indices t where a new shot starts (a cut between frames t-1 and t).

  Args:
    frames: uint8 [L, H, W, 3].
    threshold: least distance of a cut, in (0, 1].

  Returns:
    Sorted indices in [1, L - 1].
  """
  return detect_cuts_in(color_histograms(frames), threshold)


def detect_cuts_in(hists: np.ndarray, threshold: float = CUT_THRESHOLD) -> list[int]:
  """detect_cuts on color_histograms [L, 48] of the frames.

  A pair is a cut when its histogram distance is >= threshold (absolute test) and >= CUT_RATIO
  times the median distance of the CUT_WINDOW pairs on each side (adaptive test).
  """
  dist = 0.5 * np.abs(np.diff(hists, axis=0)).sum(axis=1)  # [L - 1]
  cuts = []
  for i in np.flatnonzero(dist >= threshold):
    around = np.concatenate([dist[max(i - CUT_WINDOW, 0):i], dist[i + 1:i + 1 + CUT_WINDOW]])
    local = float(np.median(around)) if around.size else 0.0
    if dist[i] >= CUT_RATIO * local:
      cuts.append(int(i) + 1)
  return cuts


def map_cuts(source_cuts: list[int], source_index: np.ndarray) -> list[int]:
  """Cuts found among all frames -> indices among the kept frames (source_index [L], increasing).

  A cut moves to the first kept frame at or after it; cuts before the first or after the last
  kept frame, and repeats (a shot with no kept frame), disappear.
  """
  kept = np.searchsorted(np.asarray(source_index), np.asarray(source_cuts, np.int64))
  return sorted({int(k) for k in kept if 0 < k < len(source_index)})


def split_at(length: int, cuts: list[int]) -> list[tuple[int, int]]:
  """[start, end) frame ranges of the shots that cuts make of a video of `length` frames."""
  bounds = [0] + sorted(c for c in cuts if 0 < c < length) + [length]
  return list(zip(bounds[:-1], bounds[1:]))


def _grey(frames: np.ndarray, size: int) -> np.ndarray:
  """uint8 [T, H, W, 3] -> float32 [T, size, size] luma (centre square, bilinear)."""
  frames = video_io.center_crop_resize(np.asarray(frames, np.uint8), size)
  return frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def motion_score(clip: np.ndarray, fps: float = 0.0) -> float:
  """A clip's mean normal-flow speed, pixels per second (per frame if fps is 0) at 64 x 64.

  For each consecutive pair, the least-squares speed along the image gradient
  sum(|I_t| |grad I|) / sum(|grad I|^2) (brightness constancy, I_t = -v . grad I), on frames
  blurred by MOTION_BLUR; a cheap proxy of mean optical-flow magnitude that grows with speed up
  to about the blur scale. 0 for a still image or a single frame.

  Args:
    clip: uint8 [T, H, W, 3].
    fps: its frame rate; 0 (unknown) gives pixels per frame.
  """
  grey = _grey(clip, MOTION_SIZE)
  if grey.shape[0] < 2:
    return 0.0
  grey = scipy.ndimage.gaussian_filter(grey, sigma=(0, MOTION_BLUR, MOTION_BLUR))
  dt = np.abs(np.diff(grey, axis=0))  # [T - 1, S, S]
  mid = 0.5 * (grey[1:] + grey[:-1])
  gy, gx = np.gradient(mid, axis=(1, 2))
  grad = np.sqrt(gx * gx + gy * gy)
  speeds = (dt * grad).sum(axis=(1, 2)) / ((grad * grad).sum(axis=(1, 2)) + 1e-6)
  return float(speeds.mean()) * (fps if fps > 0 else 1.0)


def phash(frames: np.ndarray) -> np.ndarray:
  """64-bit DCT perceptual hash of each frame: uint8 [N, H, W, 3] -> uint64 [N].

  Grey 32 x 32 frame, 2-D DCT-II, the 8 x 8 lowest frequencies; a bit is set where a
  coefficient exceeds the median of the 63 non-DC ones.
  """
  coeffs = scipy.fft.dctn(_grey(frames, HASH_SIZE), axes=(1, 2), norm="ortho")
  low = coeffs[:, :HASH_BITS_SIDE, :HASH_BITS_SIDE].reshape(len(frames), -1)  # [N, 64]
  bits = low > np.median(low[:, 1:], axis=1, keepdims=True)
  return (bits.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Bits that differ between uint64 hashes (broadcast)."""
  x = np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
  return np.unpackbits(x[..., None].view(np.uint8), axis=-1).sum(axis=-1)  # [..., 8] -> [..., 64] bits


def key_frame_hashes(clip: np.ndarray) -> np.ndarray:
  """pHashes of a clip's first, middle and last frames: uint64 [3]."""
  t = clip.shape[0]
  return phash(clip[[0, t // 2, t - 1]])


class Deduplicator:
  """Remembers the kept clips' key-frame hashes; finds a near duplicate of a new clip among them."""

  def __init__(self, max_bits: float):
    self.max_bits = max_bits
    self._hashes = np.zeros((0, 3), np.uint64)
    self._shots: list[str] = []
    self._ids: list[str] = []

  def find(self, hashes: np.ndarray, shot: str) -> tuple[str, float] | None:
    """(id, mean distance in bits) of the nearest kept clip of another shot within max_bits, or None."""
    if not self._ids:
      return None
    dist = hamming(self._hashes, hashes[None]).mean(axis=1).astype(np.float64)  # [K]
    dist[np.asarray(self._shots) == shot] = np.inf
    best = int(np.argmin(dist))
    return (self._ids[best], float(dist[best])) if dist[best] <= self.max_bits else None

  def add(self, hashes: np.ndarray, shot: str, clip_id: str) -> None:
    self._hashes = np.concatenate([self._hashes, hashes[None]])
    self._shots.append(shot)
    self._ids.append(clip_id)


def clip_fps(times: np.ndarray | None) -> float:
  """Frame rate of a clip from its frames' times in seconds (0.0 when unknown)."""
  if times is None or len(times) < 2 or not times[-1] > times[0]:
    return 0.0
  return float((len(times) - 1) / (times[-1] - times[0]))
