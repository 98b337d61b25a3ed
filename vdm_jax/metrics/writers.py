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


class MetricWriter:
  """Writes scalars, images and videos for one run.

  Files under `workdir`: TensorBoard events (in workdir itself), metrics.jsonl (one JSON object per
  write_scalars call: {"step": ..., **scalars}) and samples/{name}_{step:08d}.gif for videos.
  A disabled writer (by default every process but 0) writes nothing and never imports TensorFlow.
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    """Args:
      workdir: output folder (created when enabled).
      enabled: write or not; None -> jax.process_index() == 0.
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
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

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
