"""Decoding a folder of video files into fixed-size clips (video_io's PyAV decoder)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from vdm_jax.metrics import video_io

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".gif", ".mov", ".mkv")


@dataclasses.dataclass
class DecodeReport:
  """What happened to each file: read (with clip counts) or skipped (why)."""
  clips: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)

  def as_dict(self) -> dict:
    return {"num_read": len(self.clips), "num_skipped": len(self.skipped),
            "num_clips": sum(self.clips.values()), "clips": self.clips,
            "skipped": self.skipped}


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


def decode_frames(path: str, resolution: int, *, frame_stride: int = 1,
                  fps: float | None = None, max_frames: int | None = None
                  ) -> np.ndarray:
  """Decodes, subsamples, centre-crops and resizes a video file.

  Args:
    path: a video file FFmpeg can read.
    resolution: output height and width.
    frame_stride: keep every frame_stride-th frame (ignored when fps is set).
    fps: keep frames at this rate (by timestamp), if given.
    max_frames: stop after this many kept frames.

  Returns:
    uint8 [L, resolution, resolution, 3].

  Raises:
    FileNotFoundError: no file at path.
    ValueError: not a readable video file, or no frame kept (callers count these).
  """
  kept, next_time = [], 0.0
  for i, (rgb, time) in enumerate(video_io.iter_frames(path)):
    if fps:
      if time is None or time + 1e-6 < next_time:
        continue
      next_time += 1.0 / fps
    elif i % frame_stride:
      continue
    kept.append(video_io.center_crop_resize(rgb[None], resolution)[0])
    if max_frames and len(kept) >= max_frames:
      break
  if not kept:
    raise ValueError(f"{path!r} gave no decodable frames")
  return np.stack(kept)


def cut_clips(frames: np.ndarray, num_frames: int,
              max_clips: int | None = None) -> list[np.ndarray]:
  """Non-overlapping clips [T, H, W, C] from frames [L, H, W, C]."""
  count = frames.shape[0] // num_frames
  if max_clips:
    count = min(count, max_clips)
  return [frames[i * num_frames:(i + 1) * num_frames] for i in range(count)]


def decode_folder(files: list[tuple[str, str | None]], num_frames: int,
                  resolution: int, *, frame_stride: int = 1,
                  fps: float | None = None, max_clips_per_video: int | None = None
                  ) -> tuple[list[tuple[str, str | None, list[np.ndarray]]],
                             DecodeReport]:
  """Decodes every file into clips; unreadable or too short ones are skipped.

  Returns:
    ([(path, label, clips)] for readable files, the report).

  Raises:
    ValueError: no file gave a clip.
  """
  report, out = DecodeReport(), []
  max_frames = (num_frames * max_clips_per_video if max_clips_per_video
                else None)
  for path, label in files:
    try:
      frames = decode_frames(path, resolution, frame_stride=frame_stride,
                             fps=fps, max_frames=max_frames)
    except Exception as err:  # pylint: disable=broad-except
      report.skipped[path] = f"unreadable: {type(err).__name__}: {err}"
      continue
    clips = cut_clips(frames, num_frames, max_clips_per_video)
    if not clips:
      report.skipped[path] = (f"too short: {frames.shape[0]} frames after "
                              f"subsampling, clips need {num_frames}")
      continue
    report.clips[path] = len(clips)
    out.append((path, label, clips))
  if not out:
    raise ValueError(
        f"No readable video gave a clip of {num_frames} frames; skipped: "
        f"{report.skipped}")
  return out, report
