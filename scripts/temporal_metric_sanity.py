r"""Sanity table of the temporal metrics: metric x corruption x strength on moving_shapes clips.

  python scripts/temporal_metric_sanity.py --num_videos=64 --resolution=32 --num_frames=16

Draws clips with moving_shapes' own renderer (no TFDS build), corrupts them with each defect of
vdm_jax.metrics.temporal.corrupt at growing strengths, and prints each metric's mean over the videos
as a markdown table: the clean clips and a second draw of clean clips (the "real" reference) first,
then one row per corruption and strength. Each metric should stay at its clean value except under the
defects it reads, and grow with their strength there. The table in docs/TEMPORAL_METRICS.md is this
script's output.
"""

import os
import sys
import time

import numpy as np
from absl import app, flags

# Runnable as `python scripts/temporal_metric_sanity.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vdm_jax.data.builders.moving_shapes import render_video  # noqa: E402
from vdm_jax.metrics import temporal  # noqa: E402

_NUM = flags.DEFINE_integer("num_videos", 64, "Clips per row.")
_RES = flags.DEFINE_integer("resolution", 32, "Frame height and width.")
_FRAMES = flags.DEFINE_integer("num_frames", 16, "Frames per clip.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the clips and the corruptions.")

# Corruption -> strengths (units as in temporal.corrupt: [0, 1] colour, pixels, fraction of frames, log zoom).
STRENGTHS = {
    "tint": (0.05, 0.1, 0.2),
    "flicker": (0.05, 0.1, 0.2),
    "jitter": (1, 2, 3),
    "noise": (0.03, 0.06, 0.12),
    "dropout": (0.0625, 0.125, 0.25),
    "scale": (0.05, 0.1, 0.2),
}
SHORT = {"colour_shift": "colour shift", "object_colour_change": "obj colour",
         "object_count_instability": "count", "object_size_change": "size",
         "object_acceleration": "accel"}


def moving_shapes_clips(num_videos: int, size: int, num_frames: int, seed: int) -> np.ndarray:
  """uint8 [N, T, size, size, 3] clips drawn as the moving_shapes builder draws them."""
  return np.stack([render_video(np.random.default_rng([seed, size, i]), size, num_frames)[0]
                   for i in range(num_videos)])


def sanity_table(videos: np.ndarray, reference: np.ndarray, seed: int = 0
                 ) -> list[tuple[str, float, dict[str, float]]]:
  """Rows (corruption, strength, {metric: mean over videos}): clean, reference, then every corruption."""
  mean = lambda v: temporal.mean_over_videos(temporal.video_stats(v))
  rows = [("clean", 0.0, mean(videos)), ("reference", 0.0, mean(reference))]
  for kind, strengths in STRENGTHS.items():
    for strength in strengths:
      corrupted = temporal.corrupt(videos, kind, strength, np.random.default_rng(seed))
      rows.append((kind, strength, mean(corrupted)))
  return rows


def markdown(rows: list[tuple[str, float, dict[str, float]]]) -> str:
  """The rows as a markdown table, one column per metric."""
  names = temporal.TEMPORAL_METRICS
  lines = ["| corruption | strength | " + " | ".join(SHORT[n] for n in names) + " |",
           "|---|---:|" + "---:|" * len(names)]
  for kind, strength, values in rows:
    lines.append(f"| {kind} | {strength:g} | " + " | ".join(f"{values[n]:.4f}" for n in names) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  start = time.perf_counter()
  videos = moving_shapes_clips(_NUM.value, _RES.value, _FRAMES.value, _SEED.value)
  reference = moving_shapes_clips(_NUM.value, _RES.value, _FRAMES.value, _SEED.value + 1)
  rows = sanity_table(videos, reference, _SEED.value)
  print(f"{_NUM.value} moving_shapes clips, {_FRAMES.value} frames at {_RES.value}x{_RES.value}, "
        f"seed {_SEED.value} (reference: seed {_SEED.value + 1}); {time.perf_counter() - start:.1f} s")
  print(markdown(rows))


if __name__ == "__main__":
  app.run(main)
