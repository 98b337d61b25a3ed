"""Decoding a folder of video files into fixed-size clips (video_io's PyAV decoder), curated.

Curation (opt-in, `curation.CurationConfig`): split at shot cuts, drop static clips, drop near
duplicates. Every clip gets its frame rate and motion score (the data side of SVD's
micro-conditioning). Nothing is lost silently: unreadable files, shots too short for a clip and
every dropped clip are in the report with the reason.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from vdm_jax.data import curation
from vdm_jax.metrics import video_io

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".gif", ".mov", ".mkv")
DROP_REASONS = ("too_short", "static", "duplicate", "over_cap")


@dataclasses.dataclass
class Clip:
  """One clip and its micro-conditioning values.

  Attributes:
    key: "<path>:<shot>:<index in shot>", unique in a folder.
    frames: uint8 [T, R, R, 3].
    fps: its frame rate, from the frames' timestamps (0.0 when the file has none).
    motion: `curation.motion_score` (pixels per second at 64 x 64; per frame when fps is 0).
  """
  key: str
  frames: np.ndarray
  fps: float
  motion: float


@dataclasses.dataclass
class DecodeReport:
  """What happened to each file (read with kept-clip counts, or skipped and why) and each clip.

  `dropped` has one entry per shot too short for a clip and per dropped clip:
  {"clip": key, "reason": one of DROP_REASONS, "detail": numbers}.
  """
  found: int = 0
  clips: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  cuts: dict[str, list[int]] = dataclasses.field(default_factory=dict)
  shots: int = 0
  candidates: int = 0
  unused_frames: int = 0
  dropped: list[dict[str, str]] = dataclasses.field(default_factory=list)

  def drop(self, key: str, reason: str, detail: str) -> None:
    self.dropped.append({"clip": key, "reason": reason, "detail": detail})

  def as_dict(self) -> dict:
    by_reason = collections.Counter(d["reason"] for d in self.dropped)
    return {"num_found": self.found, "num_read": len(self.clips),
            "num_skipped": len(self.skipped), "num_cuts": sum(map(len, self.cuts.values())),
            "num_shots": self.shots, "num_candidates": self.candidates,
            "num_clips": sum(self.clips.values()),
            "num_dropped": {r: by_reason.get(r, 0) for r in DROP_REASONS},
            "num_unused_frames": self.unused_frames, "clips": self.clips,
            "skipped": self.skipped, "cuts": self.cuts, "dropped": self.dropped}


def find_videos(input_dir: str) -> list[tuple[str, str | None]]:
  """Video files under input_dir with their label (top-level subfolder).

  Files directly in input_dir are unlabelled; files in subfolders take the
  top-level subfolder's name as label. Mixing both is an error.

  Raises:
    FileNotFoundError: input_dir missing or without video files.
    ValueError: labelled and unlabelled files mixed.
  """
  if not os.path.isdir(input_dir):
    raise FileNotFoundError(f"Video folder {input_dir!r} does not exist.")
  found = []
  for root, _, files in sorted(os.walk(input_dir)):
    rel = os.path.relpath(root, input_dir)
    label = None if rel == "." else rel.split(os.sep)[0]
    for f in sorted(files):
      if f.lower().endswith(VIDEO_EXTENSIONS):
        found.append((os.path.join(root, f), label))
  if not found:
    raise FileNotFoundError(
        f"No video files ({', '.join(VIDEO_EXTENSIONS)}) in {input_dir!r}.")
  labels = {label for _, label in found}
  if None in labels and len(labels) > 1:
    raise ValueError(
        f"{input_dir!r} mixes videos at its top level with videos in "
        "subfolders: put every video in a label subfolder, or none.")
  return found


@dataclasses.dataclass
class Decoded:
  """A decoded video file.

  Attributes:
    frames: uint8 [L, R, R, 3], the kept frames (subsampled, centre-cropped, resized).
    times: float64 [L], their times in seconds, or None when the file has no timestamps.
    source_index: int [L], each kept frame's index among all the file's frames.
    histograms: float [N, 48], `curation.color_histograms` of every frame decoded (kept or not,
      for cut detection at the source rate), or None when not asked for.
  """
  frames: np.ndarray
  times: np.ndarray | None
  source_index: np.ndarray
  histograms: np.ndarray | None = None

  def cuts(self, threshold: float) -> list[int]:
    """Kept-frame indices where a new shot starts (detected at the source rate when it can)."""
    if self.histograms is None:
      return curation.detect_cuts(self.frames, threshold)
    return curation.map_cuts(curation.detect_cuts_in(self.histograms, threshold), self.source_index)


def _selected(path: str, frame_stride: int, fps: float | None, histograms: list | None):
  """Yields (index, rgb, time) of the frames to keep; appends every frame's histogram to histograms."""
  next_time = None
  for i, (rgb, time) in enumerate(video_io.iter_frames(path)):
    if histograms is not None:  # of the centre square the clips keep, subsampled to ~CUT_SIZE
      h, w, _ = rgb.shape
      side = min(h, w)
      step, top, left = max(1, side // curation.CUT_SIZE), (h - side) // 2, (w - side) // 2
      square = rgb[top:top + side:step, left:left + side:step]
      histograms.append(curation.color_histograms(square[None])[0])
    if fps:
      if time is None:
        raise ValueError(f"{path!r} has no frame timestamps; use frame_stride instead of fps")
      if next_time is not None and time + 1e-6 < next_time:
        continue
      next_time = time if next_time is None else next_time
      while next_time <= time + 1e-6:
        next_time += 1.0 / fps
    elif i % frame_stride:
      continue
    yield i, rgb, time


def decode_timed(path: str, resolution: int, *, frame_stride: int = 1,
                 fps: float | None = None, max_frames: int | None = None,
                 histograms: bool = False) -> Decoded:
  """Decodes, subsamples, centre-crops and resizes a video file, with each kept frame's time.

  With fps, the frame-rate normalisation is by frame selection: for each tick t0 + k / fps
  (t0 the first frame's time), the first frame at or after it is kept; ticks that fall before
  the next frame collapse onto it, so no frame is repeated and a source slower than fps keeps
  all its frames (its own rate, which the clip's recorded fps then says).

  Args:
    path: a video file FFmpeg can read.
    resolution: output height and width.
    frame_stride: keep every frame_stride-th frame (ignored when fps is set).
    fps: keep frames at this rate (by timestamp), if given.
    max_frames: stop after this many kept frames.
    histograms: also give every decoded frame's colour histogram (for cut detection).

  Returns:
    Decoded: the kept frames, their times and source indices (and the histograms).

  Raises:
    FileNotFoundError: no file at path.
    ValueError: not a readable video file, or no frame kept (callers count these).
  """
  hists = [] if histograms else None
  kept, times, index = [], [], []
  for i, rgb, time in _selected(path, frame_stride, fps, hists):
    kept.append(video_io.center_crop_resize(rgb[None], resolution)[0])
    times.append(time)
    index.append(i)
    if max_frames and len(kept) >= max_frames:
      break
  if not kept:
    raise ValueError(f"{path!r} gave no decodable frames")
  known = all(t is not None for t in times)
  return Decoded(np.stack(kept), np.asarray(times, np.float64) if known else None,
                 np.asarray(index), np.stack(hists) if hists else None)


def decode_frames(path: str, resolution: int, *, frame_stride: int = 1,
                  fps: float | None = None, max_frames: int | None = None
                  ) -> np.ndarray:
  """decode_timed's frames only: uint8 [L, resolution, resolution, 3]."""
  return decode_timed(path, resolution, frame_stride=frame_stride, fps=fps,
                      max_frames=max_frames).frames


def _candidates(path: str, decoded: Decoded, num_frames: int, cuts: list[int],
                report: DecodeReport) -> list[tuple[str, Clip]]:
  """(shot key, clip) for every non-overlapping num_frames clip of every shot; short shots reported."""
  frames, times = decoded.frames, decoded.times
  out, short = [], []
  for s, (start, end) in enumerate(curation.split_at(len(frames), cuts)):
    count = (end - start) // num_frames
    report.unused_frames += (end - start) - count * num_frames
    if not count:
      short.append((f"{path}:{s}", f"a shot of {end - start} frames, clips need {num_frames}"))
    for j in range(count):
      lo, hi = start + j * num_frames, start + (j + 1) * num_frames
      clip, fps = frames[lo:hi], curation.clip_fps(None if times is None else times[lo:hi])
      out.append((f"{path}:{s}", Clip(f"{path}:{s}:{j}", clip, fps, curation.motion_score(clip, fps))))
  if out:
    for key, detail in short:
      report.drop(key, "too_short", detail)
  return out


def _drop_reason(clip: Clip, shot: str, kept: int, cfg: curation.CurationConfig,
                 dedup: curation.Deduplicator, max_clips: int | None) -> tuple[str, str] | None:
  """(reason, detail) to drop clip, or None to keep it (then it is remembered for dedup)."""
  if cfg.drop_static and clip.motion < cfg.min_motion:
    return "static", f"motion {clip.motion:.2f} < {cfg.min_motion}"
  hashes = curation.key_frame_hashes(clip.frames) if cfg.dedup else None
  if cfg.dedup:
    found = dedup.find(hashes, shot)
    if found:
      return "duplicate", f"of {found[0]}, {found[1]:.1f} bits apart"
  if max_clips and kept >= max_clips:
    return "over_cap", f"max_clips_per_video={max_clips}"
  if cfg.dedup:
    dedup.add(hashes, shot, clip.key)
  return None


def curate_video(path: str, decoded: Decoded, num_frames: int, cfg: curation.CurationConfig,
                 dedup: curation.Deduplicator, report: DecodeReport,
                 max_clips: int | None = None) -> list[Clip]:
  """A decoded video's kept clips: split at cuts, cut into clips, scored, filtered; all reported.

  Args:
    path: the file (clip keys and the report name it).
    decoded: the file's frames, times (and histograms, to find cuts at the source rate).
    num_frames: frames per clip.
    cfg: what to split and drop.
    dedup: the kept clips of the files before (updated with this file's kept clips).
    report: updated with the file's cuts, shots, candidates, drops (a file without any clip is
      skipped as too short) and kept clips.
    max_clips: cap on kept clips per video.
  """
  cuts = decoded.cuts(cfg.cut_threshold) if cfg.split_at_cuts else []
  candidates = _candidates(path, decoded, num_frames, cuts, report)
  if not candidates:
    report.skipped[path] = (f"too short: {len(decoded.frames)} frames after subsampling"
                            f"{f' in {len(cuts) + 1} shots' if cuts else ''}, clips need {num_frames}")
    return []
  report.cuts[path] = cuts
  report.shots += len(cuts) + 1
  report.candidates += len(candidates)
  kept = []
  for shot, clip in candidates:
    why = _drop_reason(clip, shot, len(kept), cfg, dedup, max_clips)
    if why:
      report.drop(clip.key, *why)
    else:
      kept.append(clip)
  report.clips[path] = len(kept)
  return kept


def decode_folder(files: list[tuple[str, str | None]], num_frames: int,
                  resolution: int, *, frame_stride: int = 1,
                  fps: float | None = None, max_clips_per_video: int | None = None,
                  curation_config: curation.CurationConfig | None = None
                  ) -> tuple[list[tuple[str, str | None, list[Clip]]], DecodeReport]:
  """Decodes every file into clips; unreadable or too short ones are skipped, clips curated.

  Without curation, decoding stops once max_clips_per_video clips are in; with it, the whole
  file is decoded and the cap applies to the kept clips.

  Returns:
    ([(path, label, kept clips)] for files that kept a clip, the report).

  Raises:
    ValueError: no file kept a clip.
  """
  cfg = curation_config or curation.CurationConfig()
  report, out = DecodeReport(found=len(files)), []
  dedup = curation.Deduplicator(cfg.dedup_max_bits)
  max_frames = (num_frames * max_clips_per_video
                if max_clips_per_video and not cfg.active else None)
  for path, label in files:
    try:
      decoded = decode_timed(path, resolution, frame_stride=frame_stride, fps=fps,
                             max_frames=max_frames, histograms=cfg.split_at_cuts)
    except Exception as err:  # pylint: disable=broad-except
      report.skipped[path] = f"unreadable: {type(err).__name__}: {err}"
      continue
    clips = curate_video(path, decoded, num_frames, cfg, dedup, report, max_clips_per_video)
    if clips:
      out.append((path, label, clips))
  if not out:
    raise ValueError(
        f"No readable video gave a clip of {num_frames} frames"
        f"{' that curation kept' if report.candidates else ''}; skipped: {report.skipped}")
  return out, report
