"""Temporal metrics that read a video's objects: colour shift, object colour, count, size and motion.

Made for moving_shapes (flat-coloured shapes bouncing at constant velocity on a black background;
vdm_jax/data/builders/moving_shapes.py), where every one of them is zero or nearly zero on the data,
so what a model adds is a temporal inconsistency of its own (the eps-prediction colour shift of
Imagen Video; flicker; objects that vanish, swell or wobble). All values are amounts of change:
lower is steadier.

Objects: in each frame, the pixels whose largest channel difference from the frame's background (its
median colour) is above `threshold`, as 8-connected components of at least `min_area` pixels.
Tracks: the components of consecutive frames matched by centroid distance (Hungarian assignment,
scipy.optimize.linear_sum_assignment); pairs farther apart than `max_distance` x the frame side stay
unmatched. Values are in [0, 1] colour units; per video, then the mean over the videos that have one.

  colour_shift              || mean(m[T-k:]) - mean(m[:k]) ||_2, m_t = frame t's mean colour,
                            k = max(1, T // 4): the end-to-end shift over the clip.
  object_colour_change      mean over matched pairs (t, t+1) of || c_{t+1} - c_t ||_2, c = an
                            object's mean colour.
  object_count_instability  fraction of frames whose object count differs from the clip's mode.
  object_size_change        mean over matched pairs of |A_{t+1} - A_t| / ((A_t + A_{t+1}) / 2), A = area.
  object_acceleration       mean over tracked triples (t-1, t, t+1) and axes of the centroid's
                            |x_{t+1} - 2 x_t + x_{t-1}| / frame side, leaving out an axis where the
                            object came within one frame's travel (its speed on that axis, at most
                            MAX_SPEED x side, + 1.5 px) of a wall: bounces are the data.
  object_speed              mean over matched pairs (t, t+1) of || x_{t+1} - x_t ||_2 in pixels per
                            frame, x = an object's centroid: how fast things move (not a change:
                            the value to compare with the data's, e.g. for motion conditioning).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage, optimize

from vdm_jax.metrics import video_io

TEMPORAL_METRICS = ("colour_shift", "object_colour_change", "object_count_instability",
                    "object_size_change", "object_acceleration", "object_speed")
THRESHOLD = 0.25  # [0, 1] units above the background: moving_shapes' colours all have a channel >= 240
MAX_DISTANCE = 0.3  # fraction of the frame side an object may move between frames (data: <= 0.08)
MAX_SPEED = 0.08  # moving_shapes' top speed, fraction of the side per frame: caps the bounce margin
_CHUNK_PIXELS = 1 << 21  # videos per pass so that one pass holds about this many pixels
PROTOCOL = {
    "objects": f"8-connected components of pixels whose largest channel difference from the frame's "
               f"median colour exceeds {THRESHOLD} (values in [0, 1]), area >= max(2, H*W/256)",
    "tracks": f"Hungarian matching of centroids of consecutive frames, gate {MAX_DISTANCE} x frame side",
    "aggregate": "per video, then the mean over videos that have a value; ratio = generated / real",
    "definitions": "vdm_jax/metrics/temporal.py, docs/TEMPORAL_METRICS.md",
    "speed": "object_speed: mean centroid move of matched pairs, pixels per frame",
}


def to_unit(videos: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] or float [-1, 1] -> float32 numpy in [0, 1] (through video_io.to_float)."""
  return np.clip((video_io.to_float(videos) + 1.0) * 0.5, 0.0, 1.0)


def default_min_area(height: int, width: int) -> int:
  """Smallest component kept as an object: 1/256 of the frame, at least 2 pixels."""
  return max(2, round(height * width / 256))


@dataclasses.dataclass(frozen=True)
class Objects:
  """Connected components of a batch of videos, sorted by frame (n * T + t).

  Attributes:
    shape: (N, T, H, W, C) of the videos.
    frame: int [K] flat frame index n * T + t of each object.
    area: float [K] pixels.
    centroid: float [K, 2] (y, x) in pixels.
    colour: float [K, C] mean colour in [0, 1].
    low: float [K, 2] (y, x) of the bounding box's first pixel.
    high: float [K, 2] (y, x) of its last pixel.
    counts: int [N, T] objects per frame.
  """
  shape: tuple[int, ...]
  frame: np.ndarray
  area: np.ndarray
  centroid: np.ndarray
  colour: np.ndarray
  low: np.ndarray
  high: np.ndarray
  counts: np.ndarray


def background_colour(unit: np.ndarray) -> np.ndarray:
  """Each frame's median colour per channel ([N, T, H, W, C] in [0, 1] -> [N, T, C]).

  Over a grid of about 256 pixels per frame (every k-th row and column): objects cover a small part
  of the frame, and a full median costs more than everything else here.
  """
  n, t, h, w, c = unit.shape
  k = max(1, int(np.sqrt(h * w / 256)))
  return np.median(unit[:, :, k // 2::k, k // 2::k].reshape(n, t, -1, c), axis=2)


def _foreground(unit: np.ndarray, background: np.ndarray, threshold: float) -> np.ndarray:
  """bool [N, T, H, W]: pixels differing from their frame's background [N, T, C] by more than threshold."""
  diff = [np.abs(unit[..., i] - background[:, :, None, None, i]) for i in range(unit.shape[-1])]
  return functools.reduce(np.maximum, diff) > threshold


def find_objects(videos: np.ndarray, *, threshold: float = THRESHOLD, min_area: int | None = None
                 ) -> Objects:
  """Segments every frame of a batch into objects (one scipy.ndimage.label call for all frames).

  Args:
    videos: [N, T, H, W, C], uint8 or float in [-1, 1].
    threshold: foreground if a channel differs from the frame's median colour by more ([0, 1] units).
    min_area: smallest object in pixels; default default_min_area(H, W).

  Returns:
    Objects, sorted by frame.
  """
  return _find_objects(to_unit(videos), threshold, min_area)


def _find_objects(unit: np.ndarray, threshold: float, min_area: int | None) -> Objects:
  n, t, h, w, c = unit.shape
  min_area = default_min_area(h, w) if min_area is None else int(min_area)
  structure = np.zeros((3, 3, 3, 3), bool)
  structure[1, 1] = True  # 8-connected within a frame, never across frames or videos
  labels, num = ndimage.label(_foreground(unit, background_colour(unit), threshold), structure)
  flat = np.flatnonzero(labels)
  order = np.argsort(labels.ravel()[flat], kind="stable")
  flat = flat[order]  # foreground pixels grouped by label; labels follow frames (raster order)
  area = np.bincount(labels.ravel()[flat] - 1, minlength=num).astype(np.float64)  # [num]
  if num == 0:
    empty = np.zeros((0, 2))
    return Objects(unit.shape, np.zeros(0, int), np.zeros(0), empty, np.zeros((0, c)), empty, empty,
                   np.zeros((n, t), int))
  starts = np.concatenate([[0], np.cumsum(area[:-1]).astype(np.int64)])
  frame, y, x = np.unravel_index(flat, (n * t, h, w))
  yx = np.stack([y, x], axis=1).astype(np.float64)  # [F, 2]
  colour = np.add.reduceat(unit.reshape(-1, c)[flat].astype(np.float64), starts, axis=0)
  keep = area >= min_area
  frame = frame[starts][keep]
  counts = np.bincount(frame, minlength=n * t).reshape(n, t)
  return Objects(
      shape=unit.shape, frame=frame, area=area[keep],
      centroid=(np.add.reduceat(yx, starts, axis=0) / area[:, None])[keep],
      colour=(colour / area[:, None])[keep],
      low=np.minimum.reduceat(yx, starts, axis=0)[keep],
      high=np.maximum.reduceat(yx, starts, axis=0)[keep], counts=counts)


def match_frames(objects: Objects, max_distance: float = MAX_DISTANCE) -> np.ndarray:
  """Each object's match in the next frame of its video (Hungarian assignment on centroid distance).

  Args:
    objects: from find_objects.
    max_distance: largest centroid move between frames, as a fraction of the frame side.

  Returns:
    int [K]: index of the matched object in the next frame, -1 for none.
  """
  n, t, h, w, _ = objects.shape
  gate = max_distance * max(h, w)
  bounds = np.searchsorted(objects.frame, np.arange(n * t + 1))  # frame f: [bounds[f], bounds[f+1])
  following = np.full(len(objects.frame), -1)
  for f in np.flatnonzero((bounds[1:-1] > bounds[:-2]) & (bounds[2:] > bounds[1:-1])):
    if (f + 1) % t == 0:
      continue  # the last frame of a video
    a, b, e = bounds[f], bounds[f + 1], bounds[f + 2]
    cost = np.linalg.norm(objects.centroid[a:b, None] - objects.centroid[None, b:e], axis=-1)
    rows, cols = (np.zeros(1, int), np.zeros(1, int)) if cost.size == 1 else \
        optimize.linear_sum_assignment(cost)
    ok = cost[rows, cols] <= gate
    following[a + rows[ok]] = b + cols[ok]
  return following


def _per_video(values: np.ndarray, video: np.ndarray, n: int) -> np.ndarray:
  """Mean of values [M] grouped by video [M] -> [N], NaN where a video has none."""
  total = np.bincount(video, weights=values, minlength=n)
  count = np.bincount(video, minlength=n)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _acceleration(objects: Objects, following: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Tracked triples: (|second difference| [M, 2] / frame side, keep [M, 2] off bounces, frame [M])."""
  _, _, h, w, _ = objects.shape
  first = np.flatnonzero(following >= 0)
  first = first[following[following[first]] >= 0]
  mid = following[first]
  last = following[mid]
  pos = objects.centroid
  v1, v2 = pos[mid] - pos[first], pos[last] - pos[mid]  # [M, 2]
  side = np.array([h - 1, w - 1], np.float64)
  wall = np.min([np.minimum(objects.low[i], side - objects.high[i]) for i in (first, mid, last)], axis=0)
  margin = np.minimum(np.maximum(np.abs(v1), np.abs(v2)), MAX_SPEED * max(h, w)) + 1.5  # [M, 2]
  keep = wall > margin  # a jittery track near a wall must not hide behind a huge margin
  return np.abs(v2 - v1) / max(h, w), keep, objects.frame[first]


def video_stats(videos: np.ndarray, *, threshold: float = THRESHOLD, min_area: int | None = None,
                max_distance: float = MAX_DISTANCE) -> dict[str, np.ndarray]:
  """Every temporal metric per video (see the module docstring), in chunks of videos.

  Args:
    videos: [N, T, H, W, C] with T >= 3, uint8 or float in [-1, 1].
    threshold, min_area: object segmentation (find_objects).
    max_distance: tracking gate (match_frames).

  Returns:
    {name: float64 [N]} for name in TEMPORAL_METRICS; NaN where a video has no tracked object.
  """
  if np.ndim(videos) != 5 or np.shape(videos)[1] < 3:
    raise ValueError(f"Temporal metrics need videos [N, T, H, W, C] with T >= 3, got {np.shape(videos)}.")
  n, t, h, w = np.shape(videos)[:4]
  step = max(1, _CHUNK_PIXELS // (t * h * w))
  chunks = [_chunk_stats(videos[i:i + step], threshold, min_area, max_distance) for i in range(0, n, step)]
  return {name: np.concatenate([c[name] for c in chunks]) for name in TEMPORAL_METRICS}


def _chunk_stats(videos: np.ndarray, threshold: float, min_area: int | None,
                 max_distance: float) -> dict[str, np.ndarray]:
  unit = to_unit(videos)  # [N, T, H, W, C]
  n, t = unit.shape[:2]
  means = unit.mean(axis=(2, 3))  # [N, T, C]
  k = max(1, t // 4)
  out = {"colour_shift": np.linalg.norm(means[:, -k:].mean(1) - means[:, :k].mean(1), axis=-1)}
  objects = _find_objects(unit, threshold, min_area)
  counts = objects.counts  # [N, T]
  mode = np.array([np.bincount(row).argmax() for row in counts])
  out["object_count_instability"] = (counts != mode[:, None]).mean(axis=1)
  following = match_frames(objects, max_distance)
  i = np.flatnonzero(following >= 0)
  j = following[i]
  video = objects.frame[i] // t
  colour_change = np.linalg.norm(objects.colour[j] - objects.colour[i], axis=-1)
  out["object_colour_change"] = _per_video(colour_change, video, n)
  area_i, area_j = objects.area[i], objects.area[j]
  out["object_size_change"] = _per_video(np.abs(area_j - area_i) / (0.5 * (area_i + area_j)), video, n)
  out["object_speed"] = _per_video(
      np.linalg.norm(objects.centroid[j] - objects.centroid[i], axis=-1), video, n)
  accel, keep, frame = _acceleration(objects, following)
  rows = np.nonzero(keep)[0]
  out["object_acceleration"] = _per_video(accel[keep], frame[rows] // t, n)
  return out


def mean_over_videos(stats: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]
                     ) -> dict[str, float]:
  """Per-video values ({name: [N]}, or a list of them, one per batch) -> {name: mean over the videos
  that have a value (NaN if none)}."""
  batches = [stats] if isinstance(stats, Mapping) else list(stats)
  out = {}
  for name in batches[0]:
    values = np.concatenate([np.asarray(b[name], np.float64) for b in batches])
    finite = values[np.isfinite(values)]
    out[name] = float(finite.mean()) if finite.size else float("nan")
  return out


def ratio(generated: float, real: float) -> float:
  """generated / real, as colour_drift_metrics: inf when only real is 0, 1 when both are."""
  if np.isnan(generated) or np.isnan(real):
    return float("nan")
  if real > 0:
    return generated / real
  return float("inf") if generated > 0 else 1.0


def compare(generated: Mapping[str, float], real: Mapping[str, float],
            names: Iterable[str] = TEMPORAL_METRICS) -> dict[str, float]:
  """{name_generated, name_real, name_ratio} for each of `names` that is a temporal metric."""
  out = {}
  for name in (n for n in names if n in TEMPORAL_METRICS):
    out.update({f"{name}_generated": generated[name], f"{name}_real": real[name],
                f"{name}_ratio": ratio(generated[name], real[name])})
  return out


def against_real(generated: np.ndarray, real: Mapping[str, float] | None, names: Iterable[str]
                 ) -> dict[str, float]:
  """compare() of generated videos against the real means (from mean_over_videos) for those of `names`
  that are temporal metrics; {} (and nothing computed) when there are none."""
  names = [n for n in names if n in TEMPORAL_METRICS]
  if not names:
    return {}
  if real is None:
    raise ValueError(f"Temporal metrics {names} need the real videos' values; none were computed.")
  return compare(mean_over_videos(video_stats(generated)), real, names)


def cache_extra(real: Mapping[str, float] | None) -> dict[str, Any]:
  """What to store beside cached real-split statistics: the real means and the protocol they follow."""
  return {"temporal": None if real is None else dict(real), "temporal_protocol": PROTOCOL}


def from_cache_extra(extra: Mapping[str, Any]) -> dict[str, float] | None:
  """The real means stored by cache_extra, or None when absent or measured under another protocol."""
  if extra.get("temporal_protocol") != PROTOCOL or not extra.get("temporal"):
    return None
  return {k: float(v) for k, v in extra["temporal"].items()}


def temporal_metrics(generated: np.ndarray, real: np.ndarray, **kwargs) -> dict[str, float]:
  """Every temporal metric of generated against real videos ([N, T, H, W, C], uint8 or float [-1, 1]).

  Args:
    generated, real: the videos (numbers of videos may differ; T >= 3).
    **kwargs: threshold, min_area, max_distance (video_stats).

  Returns:
    {"{name}_generated", "{name}_real": means over videos, "{name}_ratio": generated / real (1 is as
     steady as the data, > 1 less steady)} for name in TEMPORAL_METRICS.
  """
  return compare(mean_over_videos(video_stats(generated, **kwargs)),
                 mean_over_videos(video_stats(real, **kwargs)))


# ----- Sanity corruptions: each metric must get worse with the one it targets -----

CORRUPTIONS = ("tint", "jitter", "flicker", "noise", "dropout", "scale")


def corrupt(videos: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
  """A known temporal defect of a given strength, for checking which way each metric moves.

  Kinds (values in [0, 1] units, clipped):
    tint: a colour cast growing linearly over the clip, strength * t / (T - 1) * d, d a random
      unit direction of non-negative channels per video (the eps-prediction colour shift).
    jitter: each frame translated by a random integer offset in [-strength, strength] pixels per
      axis, uncovered pixels filled with the frame's background (median colour).
    flicker: each frame's brightness scaled by 1 + strength * g_t, g_t ~ N(0, 1) (gain >= 0).
    noise: Gaussian pixel noise of standard deviation strength, independent per pixel and frame.
    dropout: round(strength * T) random frames per video replaced by their background colour (the
      objects vanish there).
    scale: each frame zoomed (nearest neighbour) by exp(strength * g_t), g_t ~ N(0, 1), about the
      centroid of its foreground: objects swell and shrink (one object per clip, as moving_shapes).

  Args:
    videos: [N, T, H, W, C], uint8 or float in [-1, 1].
    kind: one of CORRUPTIONS.
    strength: as above; 0 returns the videos unchanged (in value).
    rng: numpy generator (consumed).

  Returns:
    The corrupted videos, uint8 if the input was uint8, else float32 in [-1, 1].
  """
  if kind not in CORRUPTIONS:
    raise ValueError(f"Unknown corruption {kind!r}; choose from {CORRUPTIONS}.")
  unit = to_unit(videos)  # [N, T, H, W, C]
  n, t, h, w, c = unit.shape
  background = background_colour(unit)[:, :, None, None]  # [N, T, 1, 1, C]
  if kind == "tint":
    direction = np.abs(rng.normal(size=(n, 1, 1, 1, c)))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    out = unit + strength * np.linspace(0, 1, t)[None, :, None, None, None] * direction
  elif kind == "jitter":
    offsets = rng.integers(-int(strength), int(strength) + 1, (n, t, 2, 1))
    out = _resample(unit, background, np.arange(h) - offsets[:, :, 0], np.arange(w) - offsets[:, :, 1])
  elif kind == "scale":
    centre = _foreground_centroid(unit, background[:, :, 0, 0])  # [N, T, 2, 1]
    zoom = np.exp(strength * rng.normal(size=(n, t, 1)))
    out = _resample(unit, background, centre[:, :, 0] + (np.arange(h) - centre[:, :, 0]) / zoom,
                    centre[:, :, 1] + (np.arange(w) - centre[:, :, 1]) / zoom)
  elif kind == "flicker":
    out = unit * np.maximum(1.0 + strength * rng.normal(size=(n, t, 1, 1, 1)), 0.0)
  elif kind == "noise":
    out = unit + strength * rng.normal(size=unit.shape)
  else:
    dropped = np.argsort(rng.random((n, t)), axis=1) < round(strength * t)  # [N, T]
    out = np.where(dropped[:, :, None, None, None], background, unit)
  out = np.clip(out, 0.0, 1.0).astype(np.float32)
  if np.asarray(videos).dtype == np.uint8:
    return np.round(out * 255.0).astype(np.uint8)
  return out * 2.0 - 1.0


def _foreground_centroid(unit: np.ndarray, background: np.ndarray) -> np.ndarray:
  """(y, x) centroid of each frame's foreground, frame centre if none: [N, T, 2, 1]."""
  mask = _foreground(unit, background, THRESHOLD).astype(np.float64)  # [N, T, H, W]
  h, w = mask.shape[2:]
  mass = np.maximum(mask.sum(axis=(2, 3)), 1e-9)
  cy = np.where(mass > 0.5, (mask.sum(axis=3) * np.arange(h)).sum(-1) / mass, (h - 1) / 2)
  cx = np.where(mass > 0.5, (mask.sum(axis=2) * np.arange(w)).sum(-1) / mass, (w - 1) / 2)
  return np.stack([cy, cx], axis=2)[..., None]


def _resample(unit: np.ndarray, fill: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Frames [N, T, H, W, C] read at source rows ys [N, T, H] and columns xs [N, T, W] (nearest
  pixel); sources outside the frame get fill [N, T, 1, 1, C]."""
  n, t, h, w, _ = unit.shape
  ys, xs = np.round(ys).astype(int), np.round(xs).astype(int)
  inside = ((ys >= 0) & (ys < h))[..., :, None] & ((xs >= 0) & (xs < w))[..., None, :]  # [N, T, H, W]
  ni, ti = np.arange(n)[:, None, None, None], np.arange(t)[None, :, None, None]
  moved = unit[ni, ti, np.clip(ys, 0, h - 1)[..., :, None], np.clip(xs, 0, w - 1)[..., None, :]]
  return np.where(inside[..., None], moved, fill)
