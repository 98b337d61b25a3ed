"""Metric writer: TensorBoard event files plus a JSONL log, only on process 0 by default."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from vdm_jax import runtime
from vdm_jax.metrics import video_io


def _to_float(value: Any) -> float:
  return float(np.asarray(value))


def _keep_row(line: str, resume_step: int) -> bool:
  try:
    row = json.loads(line)
  except ValueError:
    return True
  step = row.get("step") if isinstance(row, dict) else None
  return not isinstance(step, (int, float)) or step <= resume_step


def _truncate_jsonl(path: str, resume_step: int) -> None:
  """Rewrites `path` (atomically) without the rows of steps after `resume_step`."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  lines = text.splitlines()
  if lines and not text.endswith("\n"):
    lines.pop()  # torn by a kill in the middle of a write; appending would glue rows together
  kept = [line for line in lines if _keep_row(line, resume_step)]
  if len(kept) == len(lines) and (not text or text.endswith("\n")):
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(line + "\n" for line in kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class MetricWriter:
  """Writes scalars, images and videos for one run.

  Files under `workdir`: TensorBoard events (in workdir itself), metrics.jsonl (one JSON object per
  write_scalars call: {"step": ..., **scalars}) and samples/{name}_{step:08d}.gif for videos.
  A disabled writer (by default every process but 0) writes nothing and never imports TensorFlow.

  A resumed run replays the steps logged after its checkpoint: `resume_step` drops their rows from
  metrics.jsonl when it is opened, so each step appears once. TensorBoard event files are left as
  they are (an event file is append-only): they hold a replayed step twice, and TensorBoard does not
  purge the older value for TF2 event files (its "purge orphaned data" needs a SessionLog.START that
  tf.summary writers do not write), so a curve may step back once per resume; metrics.jsonl is
  the record to read.
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None, resume_step: int | None = None):
    """Args:
      workdir: output folder (created when enabled).
      enabled: write or not; None -> jax.process_index() == 0.
      resume_step: the step a resumed run restarts from: rows of metrics.jsonl with a larger
        "step" are deleted (rows without a step and those up to it are kept, and so is an
        unparseable line except a torn last one, which a kill during a write leaves). None keeps
        the file as it is.
    """
    if enabled is None:
      import jax  # pylint: disable=g-import-not-at-top

      enabled = jax.process_index() == 0
    self.workdir = workdir
    self.enabled = bool(enabled)
    self._summary_writer = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      if resume_step is not None and os.path.exists(path):
        _truncate_jsonl(path, int(resume_step))
      self._jsonl = open(path, "a", encoding="utf-8")

  @property
  def _tb(self):
    if self._summary_writer is None:
      self._tf = runtime.import_tensorflow()
      self._summary_writer = self._tf.summary.create_file_writer(self.workdir)
    return self._summary_writer

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes float scalars (numpy / jax scalars accepted) to TensorBoard and metrics.jsonl."""
    if not self.enabled:
      return
    values = {k: _to_float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()  # a line per log step, readable while the run goes on
    with self._tb.as_default():
      for name, value in values.items():
        self._tf.summary.scalar(name, value, step=int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Writes images, each uint8 [H, W, C] (or float in [-1, 1]), C in {1, 3}."""
    if not self.enabled:
      return
    with self._tb.as_default():
      for name, image in images.items():
        image = video_io.to_uint8(np.asarray(image))
        if image.ndim != 3:
          raise ValueError(
              f"write_images expects [H, W, C] per image, got {image.shape} for {name!r}.")
        self._tf.summary.image(name, image[None], step=int(step))

  def write_videos(self, step: int, videos: Mapping[str, np.ndarray],
                   fps: int = 8) -> dict[str, str]:
    """Writes videos, each uint8 [N, T, H, W, C] (or float in [-1, 1]).

    TensorBoard has no video summary: the frame strip grid (one row per video) goes in as an image,
    and the grid of all N videos as an animated GIF under workdir/samples/.

    Returns:
      {name: gif path} (empty when disabled).
    """
    if not self.enabled:
      return {}
    paths = {}
    for name, batch in videos.items():
      batch = video_io.to_uint8(np.asarray(batch))
      self.write_images(step, {name: video_io.frames_strip_grid(batch)})
      safe = name.replace("/", "_")
      gif_path = os.path.join(self.workdir, "samples", f"{safe}_{int(step):08d}.gif")
      paths[name] = video_io.write_gif(gif_path, video_io.video_grid(batch), fps)
    return paths

  def flush(self) -> None:
    if not self.enabled:
      return
    self._jsonl.flush()
    if self._summary_writer is not None:
      self._summary_writer.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self.flush()
    self._jsonl.close()
    if self._summary_writer is not None:
      self._summary_writer.close()
    self.enabled = False

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
