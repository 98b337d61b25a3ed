"""Video files and grids: MP4 (H.264 through PyAV), looping GIF, PNG frame strips, .npz.

Everything here is numpy on the host; videos are uint8 [N, T, H, W, C] (or float in [-1, 1] where
noted), C in {1, 3}. Used by training (sample logging), sampling, evaluation and the data pipeline,
which takes its uint8 <-> float conversion, its PyAV decoder and its frame crop/resize from here
(one definition each).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".gif", ".avi", ".mov", ".webm", ".mkv")


def to_uint8(videos: np.ndarray) -> np.ndarray:
  """Maps float values in [-1, 1] to uint8 [0, 255] (clipped, rounded); uint8 passes through.

  Args:
    videos: any shape, float (any dtype) in [-1, 1] or uint8.

  Returns:
    uint8 array of the same shape.
  """
  videos = np.asarray(videos)
  if videos.dtype == np.uint8:
    return videos
  if not np.issubdtype(videos.dtype, np.floating):
    raise ValueError(
        f"to_uint8 expects float values in [-1, 1] or uint8, got dtype {videos.dtype}.")
  scaled = (np.clip(videos.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5
  return np.round(scaled).astype(np.uint8)


def to_float(videos: Any, xp: ModuleType = np) -> Any:
  """Maps uint8 [0, 255] to float32 in [-1, 1]; float input is returned as float32 unchanged.

  The training data goes through this formula, so it must not change: u * float32(2 / 255) - 1,
  in float32 (exact at 0 and 255, and to_uint8 inverts it exactly for all 256 values). Under jit,
  XLA may fuse the multiply-subtract, so device results can differ from numpy's by an ulp.

  Args:
    videos: array of any shape, uint8 or float.
    xp: array namespace: numpy (host) or jax.numpy (on device, traceable under jit).

  Returns:
    float32 array of the same shape, an `xp` array.
  """
  videos = xp.asarray(videos)
  if videos.dtype == np.uint8:
    return videos.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
  return videos.astype(np.float32)


def _check_frames(frames: np.ndarray) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
    raise ValueError(f"Expected frames [T, H, W, C] with C in (1, 3), got shape {frames.shape}.")
  if frames.shape[0] == 0:
    raise ValueError("Expected at least one frame, got T = 0.")
  return to_uint8(frames)


def _to_rgb(frames: np.ndarray) -> np.ndarray:
  """[T, H, W, 1|3] -> [T, H, W, 3] (gray repeated)."""
  return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def upscale_nearest(frames: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscale of [..., H, W, C] by an integer factor."""
  if scale <= 1:
    return frames
  return np.repeat(np.repeat(frames, scale, axis=-3), scale, axis=-2)


def write_mp4(path: str, frames: np.ndarray, fps: int = 8, *, min_size: int = 128,
              crf: int = 12) -> str:
  """Writes an H.264 MP4 (yuv420p, plays everywhere).

  Small videos are nearest-upscaled by the smallest integer factor that makes the short side at
  least `min_size` (players show tiny videos badly), then padded by edge replication to even sizes
  (H.264 with yuv420p needs them). Gray (C = 1) is written as RGB gray.

  Args:
    path: output file (parent folders are created).
    frames: uint8 [T, H, W, C] (float in [-1, 1] is converted), C in {1, 3}.
    fps: frames per second.
    min_size: short side after upscaling; 0 keeps the size.
    crf: x264 quality (0 lossless luma, 23 default; lower is better).

  Returns:
    path.
  """
  import av  # pylint: disable=g-import-not-at-top

  frames = _to_rgb(_check_frames(frames))
  _, h, w, _ = frames.shape
  if min_size > 0 and min(h, w) < min_size:
    frames = upscale_nearest(frames, math.ceil(min_size / min(h, w)))
  _, h, w, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with av.open(path, mode="w") as container:
    stream = container.add_stream("libx264", rate=int(fps))
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": str(crf)}
    for frame in frames:
      av_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
      for packet in stream.encode(av_frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def _palette_frames(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Quantizes RGB frames [T, H, W, 3] to one shared 256-colour palette.

  Returns:
    (indices uint8 [T, H, W], palette uint8 [256, 4] in ARGB order, as PyAV's pal8 wants).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  t, h, w, _ = frames.shape
  strip = Image.fromarray(np.ascontiguousarray(frames.reshape(t * h, w, 3)))
  quantized = strip.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
  rgb = np.zeros((256, 3), np.uint8)
  used = np.asarray(quantized.getpalette(), np.uint8).reshape(-1, 3)[:256]
  rgb[:len(used)] = used
  palette = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)
  return np.asarray(quantized, np.uint8).reshape(t, h, w), palette


def write_gif(path: str, frames: np.ndarray, fps: int = 8, scale: int = 1) -> str:
  """Writes a looping animated GIF (FFmpeg's encoder through PyAV; every frame kept).

  RGB frames share one 256-colour palette (median cut, no dithering); gray stays exact.
  (Pillow's GIF writer merges identical consecutive frames, which would change T on read-back.)

  Args:
    path: output file (parent folders are created).
    frames: uint8 [T, H, W, C] (float in [-1, 1] is converted), C in {1, 3}.
    fps: frames per second.
    scale: integer nearest-neighbour upscale factor.

  Returns:
    path.
  """
  import av  # pylint: disable=g-import-not-at-top

  frames = upscale_nearest(_check_frames(frames), int(scale))
  _, h, w, c = frames.shape
  if c == 1:
    av_frames = [av.VideoFrame.from_ndarray(np.ascontiguousarray(f[..., 0]), format="gray")
                 for f in frames]
  else:
    indices, palette = _palette_frames(frames)
    av_frames = [av.VideoFrame.from_ndarray((np.ascontiguousarray(i), palette), format="pal8")
                 for i in indices]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with av.open(path, mode="w", format="gif", options={"loop": "0"}) as container:
    stream = container.add_stream("gif", rate=int(fps))
    stream.width, stream.height = w, h
    stream.pix_fmt = av_frames[0].format.name
    for frame in av_frames:
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def write_png(path: str, image: np.ndarray) -> str:
  """Writes a uint8 [H, W, C] image (C in {1, 3}) as PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  image = to_uint8(np.asarray(image))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
  return path


def _check_videos(videos: np.ndarray) -> np.ndarray:
  videos = np.asarray(videos)
  if videos.ndim != 5 or videos.shape[-1] not in (1, 3) or videos.shape[0] == 0:
    raise ValueError(
        f"Expected videos [N, T, H, W, C] with N >= 1 and C in (1, 3), got {videos.shape}.")
  return to_uint8(videos)


def video_grid(videos: np.ndarray, ncols: int | None = None, pad: int = 1,
               pad_value: int = 255) -> np.ndarray:
  """Tiles N videos into one video.

  Args:
    videos: uint8 [N, T, H, W, C].
    ncols: videos per row; default ceil(sqrt(N)).
    pad: pixels between tiles and around the border.
    pad_value: padding colour.

  Returns:
    uint8 [T, rows * (H + pad) + pad, ncols * (W + pad) + pad, C].
  """
  videos = _check_videos(videos)
  n, t, h, w, c = videos.shape
  ncols = int(ncols) if ncols else math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  grid = np.full((t, nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[:, y:y + h, x:x + w] = videos[i]
  return grid


def frames_strip_grid(videos: np.ndarray, pad: int = 1, pad_value: int = 255) -> np.ndarray:
  """One row per video, its frames left to right: an image for PNG / TensorBoard.

  Args:
    videos: uint8 [N, T, H, W, C].
    pad: pixels between frames and rows and around the border.
    pad_value: padding colour.

  Returns:
    uint8 [N * (H + pad) + pad, T * (W + pad) + pad, C].
  """
  videos = _check_videos(videos)
  n, t, h, w, c = videos.shape
  # Each frame as its own 1-frame "video" in an N x T grid, row-major.
  tiles = videos.reshape(n * t, 1, h, w, c)
  return video_grid(tiles, ncols=t, pad=pad, pad_value=pad_value)[0]


def save_videos(out_dir: str, videos: np.ndarray, *, prefix: str = "sample", fps: int = 8,
                formats: Sequence[str] = ("mp4", "gif")) -> dict[str, list[str] | str]:
  """Writes a batch of videos: one file per sample and format, grids of all, a PNG strip, an .npz.

  Files: {prefix}_{i:04d}.{fmt} for each sample, {prefix}_grid.{fmt}, {prefix}_strip.png and
  {prefix}.npz (key "videos": uint8 [N, T, H, W, C]).

  Args:
    out_dir: output folder (created).
    videos: float [-1, 1] or uint8 [N, T, H, W, C].
    prefix: file name prefix.
    fps: frames per second.
    formats: any of "mp4", "gif".

  Returns:
    {"mp4": [paths], "gif": [paths], "grid_mp4": path, "grid_gif": path, "strip_png": path,
    "npz": path} (only the formats asked for).
  """
  unknown = set(formats) - {"mp4", "gif"}
  if unknown:
    raise ValueError(f"Unknown video formats {sorted(unknown)}; use 'mp4' and/or 'gif'.")
  videos = _check_videos(videos)
  os.makedirs(out_dir, exist_ok=True)
  writers = {"mp4": write_mp4, "gif": write_gif}
  written: dict[str, list[str] | str] = {}
  grid = video_grid(videos)
  for fmt in formats:
    written[fmt] = [writers[fmt](os.path.join(out_dir, f"{prefix}_{i:04d}.{fmt}"), v, fps)
                    for i, v in enumerate(videos)]
    written[f"grid_{fmt}"] = writers[fmt](os.path.join(out_dir, f"{prefix}_grid.{fmt}"), grid, fps)
  written["strip_png"] = write_png(os.path.join(out_dir, f"{prefix}_strip.png"),
                                   frames_strip_grid(videos))
  written["npz"] = os.path.join(out_dir, f"{prefix}.npz")
  np.savez_compressed(written["npz"], videos=videos)
  return written


def _unreadable(path: str, reason: str) -> ValueError:
  """The one-line error for a file FFmpeg cannot decode (no errno, no traceback chain needed)."""
  reason = " ".join(str(reason).split())
  return ValueError(f"{path!r} is not a readable video file ({reason})")


def iter_frames(path: str) -> Iterator[tuple[np.ndarray, float | None]]:
  """Decodes the first video stream of a file (mp4, gif, avi, ...) frame by frame with PyAV.

  The package's only video decoder: read_video and the data pipeline's folder tool use it. Errors
  are raised when iteration starts (or at the frame FFmpeg fails on).

  Args:
    path: the file.

  Yields:
    (frame uint8 [H, W, 3] RGB, its presentation time in seconds or None when the file has none).

  Raises:
    FileNotFoundError: no file at path.
    ValueError: FFmpeg cannot read the file as a video (not a video, corrupt, no video stream).
  """
  import av  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise FileNotFoundError(f"No video file at {path!r}.")
  try:
    container = av.open(path)
  except av.FFmpegError as err:
    raise _unreadable(path, err.strerror or type(err).__name__) from None
  with container:
    if not container.streams.video:
      raise _unreadable(path, "no video stream")
    decoded = container.decode(video=0)
    while True:
      try:
        frame = next(decoded)
      except StopIteration:
        return
      except av.FFmpegError as err:
        raise _unreadable(path, err.strerror or type(err).__name__) from None
      yield frame.to_ndarray(format="rgb24"), frame.time


def read_video(path: str, max_frames: int | None = None) -> np.ndarray:
  """Decodes a video file (mp4, gif, avi, ...) with PyAV.

  Args:
    path: the file.
    max_frames: stop after this many frames; None reads all.

  Returns:
    uint8 [T, H, W, 3].

  Raises:
    FileNotFoundError: no file at path.
    ValueError: not a readable video file, or no frames in it.
  """
  frames = []
  for frame, _ in iter_frames(path):
    frames.append(frame)
    if max_frames is not None and len(frames) >= max_frames:
      break
  if not frames:
    raise ValueError(f"{path!r} holds no decodable video frames.")
  return np.stack(frames)


def list_video_files(folder: str, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> list[str]:
  """Sorted video files directly inside `folder` (grids and strips excluded)."""
  exts = tuple(extensions)
  names = sorted(n for n in os.listdir(folder)
                 if n.lower().endswith(exts) and "_grid." not in n and not n.startswith("grid."))
  return [os.path.join(folder, n) for n in names]


def one_format(files: list[str]) -> list[str]:
  """Files of the most common extension (save_videos writes each sample as .mp4 and .gif)."""
  by_ext: dict[str, list[str]] = {}
  for f in files:
    by_ext.setdefault(os.path.splitext(f)[1].lower(), []).append(f)
  return max(by_ext.values(), key=lambda group: (len(group), group[0].lower().endswith(".mp4")))


def match_resolution(videos: np.ndarray, resolution: int) -> np.ndarray:
  """Undoes an integer nearest upscale (write_mp4 enlarges small videos): [N, T, kR, kR', C] -> R.

  Videos already at `resolution`, or not an integer multiple of it, are returned unchanged.
  """
  h, w = videos.shape[2:4]
  if (h, w) == (resolution, resolution) or h % resolution or w % resolution or h != w:
    return videos
  k = h // resolution
  return videos[:, :, k // 2::k, k // 2::k]


def center_crop_resize(frames: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 [T, H, W, C] -> [T, resolution, resolution, C]: centre square crop, bilinear resize."""
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
