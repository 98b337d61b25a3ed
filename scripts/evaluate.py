r"""Evaluates generated videos against a dataset split; every number is written with its protocol.

  # Samples already on disk (.npz with key "videos", or a folder of mp4/gif):
  python scripts/evaluate.py --samples=out/samples.npz --dataset=bair_robot_pushing_small \
      --num_frames=16 --resolution=64 --metrics=fvd,colour_drift
  # Sample a trained model first (vdm_jax.generation.generate_from_workdir), sharded over the devices:
  python scripts/evaluate.py --workdir=runs/bair --dataset=bair_robot_pushing_small \
      --num_samples=256 --sampler=ddim --num_steps=128
  # Frame prediction (BAIR 1 -> 15), best of 4 samples per video, against the split's first videos:
  python scripts/evaluate.py --samples=pred.npz --dataset=bair_robot_pushing_small \
      --metrics=fvd,psnr,ssim,lpips --num_cond_frames=1 --best_of_k=4
  # Object-level temporal metrics on moving_shapes, each against the data (docs/TEMPORAL_METRICS.md):
  python scripts/evaluate.py --samples=out/samples.npz --dataset=moving_shapes --resolution=32 \
      --metrics=colour_drift,colour_shift,object_colour_change,object_count_instability,\
object_size_change,object_acceleration,object_speed
  # Motion conditioning: samples asked for a motion (sample.py --motion) against the data's speed:
  python scripts/evaluate.py --samples=runs/motion/samples/.../sample.npz --dataset=moving_shapes_speeds \
      --num_frames=8 --resolution=16 --metrics=object_speed

Writes eval_results.json (beside the samples, in the workdir, or --output): {"summary": one line,
"metrics": {...}, "protocol": {generated, real, fvd, frame_prediction, colour_drift, temporal, versions,
...}}.
Real-set FVD statistics are cached per dataset, split and protocol in --cache_dir.
"""

import json
import os
import sys

from absl import app, flags

# Runnable as `python scripts/evaluate.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vdm_jax import evaluation  # noqa: E402
from vdm_jax.data import DataConfig  # noqa: E402
from vdm_jax.parallel.distributed import initialize  # noqa: E402
from vdm_jax.runtime import setup_runtime  # noqa: E402

_SAMPLES = flags.DEFINE_string("samples", None, ".npz (key 'videos') or folder of generated videos.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to sample from instead of --samples.")
_DATASET = flags.DEFINE_string("dataset", None, "Real dataset name (vdm_jax.data).", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir; default $VDM_DATA_DIR.")
_SPLIT = flags.DEFINE_string("split", "test", "Real split.")
_FRAMES = flags.DEFINE_integer("num_frames", 16, "Frames per real clip (must match the samples).")
_STRIDE = flags.DEFINE_integer("frame_stride", 1, "Frame stride of real clips.")
_RES = flags.DEFINE_integer("resolution", 64, "Real clip height and width (must match the samples).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Generated videos (all in --samples if unset).")
_NUM_REAL = flags.DEFINE_integer("num_real", None, "Real videos; default as many as generated.")
_METRICS = flags.DEFINE_list("metrics", ["fvd", "colour_drift"],
                             f"Any of {', '.join(evaluation.ALL_METRICS)} (the temporal "
                             "ones are defined in docs/TEMPORAL_METRICS.md).")
_COND = flags.DEFINE_integer("num_cond_frames", 0, "Given (not generated) leading frames.")
_BEST_OF_K = flags.DEFINE_integer("best_of_k", 1, "Samples per ground-truth video (consecutive rows).")
_SAMPLER = flags.DEFINE_string("sampler", "ddim", "Sampler for --workdir.")
_STEPS = flags.DEFINE_integer("num_steps", 128, "Sampling steps for --workdir.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed for --workdir.")
_EMA = flags.DEFINE_bool("use_ema", True, "Sample with the EMA parameters.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Videos per I3D / data batch.")
_CACHE = flags.DEFINE_string("cache_dir", "~/.cache/vdm_jax/fvd_stats", "Real FVD statistics cache ('' off).")
_OUTPUT = flags.DEFINE_string("output", None, "Results JSON path.")


def main(argv):
  del argv
  setup_runtime()
  initialize(cpu_devices=-1)  # --workdir sampling: one CPU device per core, as sample.py does
  data_config = DataConfig(name=_DATASET.value, data_dir=_DATA_DIR.value, eval_split=_SPLIT.value,
                           num_frames=_FRAMES.value, frame_stride=_STRIDE.value, resolution=_RES.value)
  try:
    results = evaluation.evaluate(
        data_config, samples=_SAMPLES.value, workdir=_WORKDIR.value, num_samples=_NUM_SAMPLES.value,
        num_real=_NUM_REAL.value, metrics=_METRICS.value, output=_OUTPUT.value,
        cache_dir=os.path.expanduser(_CACHE.value) if _CACHE.value else None, batch_size=_BATCH.value,
        best_of_k=_BEST_OF_K.value, num_cond_frames=_COND.value, sampler=_SAMPLER.value,
        num_steps=_STEPS.value, seed=_SEED.value, use_ema=_EMA.value)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"evaluate.py: {e}") from e
  print(json.dumps(results["metrics"], indent=2))
  print(results["summary"])
  print(f"Results: {results['path']}")


if __name__ == "__main__":
  app.run(main)
