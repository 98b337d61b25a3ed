"""Micro-conditioning on motion, shown: a model trained on slow and fast shapes, asked for either.

    python scripts/motion_demo.py --workdir runs/motion_demo [--num_steps N] [--num_samples 256]

Trains `configs/default.py:motion` (moving_shapes_speeds: each video slow or fast, its motion score
stored; model.micro_conditioning=("motion",)) with train.py (resuming a half-trained run, skipping a
finished one), samples --num_samples videos with sample.py at the slow and at the fast motion value
(the median motion score of the real slow and fast test clips; the clusters are split at the geometric mean of
the extremes), and measures `object_speed` (metrics.temporal: mean centroid move of tracked
objects, pixels per frame at the training resolution) of the samples and of the real slow and fast
clips (the training clip: the first data.num_frames frames, resized like the training data).
Writes WORKDIR/results.json and prints a table.
"""

import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vdm_jax import checkpoints  # noqa: E402
from vdm_jax.config import ExperimentConfig  # noqa: E402
from vdm_jax.data import pipeline, registry  # noqa: E402
from vdm_jax.metrics import temporal, video_io  # noqa: E402

CONFIG = "configs/default.py:motion"
_WORKDIR = flags.DEFINE_string("workdir", "runs/motion_demo", "Where the run, samples and results go.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Training steps; default the config's.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 256, "Videos sampled at each motion value.")
_NUM_REAL = flags.DEFINE_integer("num_real", 256, "Real test clips measured (split into slow / fast).")


def real_clips(exp: ExperimentConfig, num: int) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 clips [N, T, R, R, C] as the model sees them, motion scores [N]) of the test split."""
  d = exp.data
  source = registry.open_source(d.name, d.eval_split, d.resolved_data_dir)
  spec = registry.get_spec(d.name)
  clips, motion = [], []
  for i in range(min(num, len(source))):
    example = source[i]
    clip = pipeline.temporal_crop(registry.read_video(example, spec), d.num_frames, d.frame_stride, 0)
    clips.append(video_io.center_crop_resize(clip, d.resolution))
    motion.append(registry.read_micro(example)["motion"])
  return np.stack(clips), np.asarray(motion)


def speed(videos: np.ndarray) -> float:
  """Mean object speed (pixels per frame) over the videos."""
  return temporal.mean_over_videos(temporal.video_stats(videos))["object_speed"]


def _trained(train_dir: str, num_steps: int | None) -> bool:
  """Whether train_dir holds a checkpoint at its config's (or num_steps) last step."""
  try:
    exp, step, _ = checkpoints.read_experiment(train_dir)
  except (FileNotFoundError, ValueError):
    return False
  return step >= (num_steps or exp.train.num_steps)


def run(cmd: list[str], log: str) -> None:
  print("+", " ".join(cmd), flush=True)
  with open(log, "a") as f:
    subprocess.run(cmd, check=True, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  train_dir = os.path.join(workdir, "train")
  os.makedirs(workdir, exist_ok=True)
  train = [sys.executable, "train.py", f"--config={CONFIG}", f"--workdir={train_dir}"]
  if _NUM_STEPS.value:
    train.append(f"--config.train.num_steps={_NUM_STEPS.value}")
  if not _trained(train_dir, _NUM_STEPS.value):
    run(train, os.path.join(workdir, "train.log"))
  exp, _, _ = checkpoints.read_experiment(train_dir)  # the config the model was trained with
  clips, motion = real_clips(exp, _NUM_REAL.value)
  split = float(np.sqrt(motion.min() * motion.max()))
  groups = {"slow": motion < split, "fast": motion >= split}
  results = {"config": CONFIG, "num_steps": _NUM_STEPS.value or exp.train.num_steps,
             "num_samples": _NUM_SAMPLES.value, "split_motion": split, "rows": {}}
  for name, mask in groups.items():
    value = float(np.median(motion[mask]))
    out = os.path.join(workdir, f"samples_{name}")
    run([sys.executable, "sample.py", f"--workdir={train_dir}", f"--num_samples={_NUM_SAMPLES.value}",
         f"--motion={value}", f"--output_dir={out}"], os.path.join(workdir, "sample.log"))
    samples = np.load(os.path.join(out, "sample.npz"))["videos"]
    results["rows"][name] = {"motion": value, "num_real": int(mask.sum()),
                             "real_object_speed": speed(clips[mask]),
                             "sample_object_speed": speed(samples)}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(f"object speed, pixels/frame at {exp.data.resolution}x{exp.data.resolution} "
        f"({results['num_steps']} steps, {_NUM_SAMPLES.value} samples per row):")
  print("| asked | motion | samples | real |\n|---|---|---|---|")
  for name, row in results["rows"].items():
    print(f"| {name} | {row['motion']:.1f} | {row['sample_object_speed']:.3f} | "
          f"{row['real_object_speed']:.3f} (n={row['num_real']}) |")


if __name__ == "__main__":
  app.run(main)
