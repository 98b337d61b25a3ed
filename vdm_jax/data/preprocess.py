"""Pure numpy preprocessing of clips: temporal crop, spatial crop/resize.

uint8 -> float conversion is vdm_jax.metrics.video_io.to_float (one definition for the package).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def clip_span(num_frames: int, frame_stride: int) -> int:
  """Source frames covered by a clip of num_frames at frame_stride."""
  return (num_frames - 1) * frame_stride + 1


def temporal_crop(video: np.ndarray, num_frames: int, frame_stride: int,
                  start: int) -> np.ndarray:
  """Frames start, start + stride, ... of video [L, H, W, C] -> [T, H, W, C].

  Raises:
    ValueError: the video is shorter than the clip.
  """
  span = clip_span(num_frames, frame_stride)
  if start < 0 or start + span > video.shape[0]:
    raise ValueError(
        f"A clip of {num_frames} frames at stride {frame_stride} from frame "
        f"{start} needs {start + span} frames; the video has "
        f"{video.shape[0]}. Lower num_frames or frame_stride.")
  return video[start:start + span:frame_stride]


def random_start(rng: np.random.Generator, length: int, num_frames: int,
                 frame_stride: int) -> int:
  """Uniform start frame of a clip inside a video of `length` frames."""
  return int(rng.integers(0, max(length - clip_span(num_frames,
                                                    frame_stride), 0) + 1))


def center_crop_resize(frames: np.ndarray, resolution: int) -> np.ndarray:
  """Centre crop to a square, then resize (antialiased bilinear).

  Args:
    frames: uint8 [T, H, W, C].
    resolution: output height and width.

  Returns:
    uint8 [T, resolution, resolution, C].
  """
  _, h, w, c = frames.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  frames = frames[:, top:top + side, left:left + side]
  if side == resolution:
    return frames
  out = []
  for frame in frames:
    pil = Image.fromarray(frame[..., 0] if c == 1 else frame)
    arr = np.asarray(pil.resize((resolution, resolution), Image.BILINEAR))
    out.append(arr.reshape(resolution, resolution, c))
  return np.stack(out)


def match_channels(frames: np.ndarray, channels: int) -> np.ndarray:
  """Grey -> RGB by repetition; other mismatches are a ValueError."""
  if frames.shape[-1] == channels:
    return frames
  if frames.shape[-1] == 1:
    return np.repeat(frames, channels, axis=-1)
  raise ValueError(
      f"Cannot turn {frames.shape[-1]}-channel frames into {channels} "
      "channels; use an image dataset with the videos' channel count.")
