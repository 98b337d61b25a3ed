"""Quality against model calls: FVD and colour drift of few-step samplers and distilled students.

    python -m benchmarks.fewstep --workdir runs/default --students runs/distill/steps_8 \
        --calls 1,2,4,8,16,32,64 --num_samples 256 --output fewstep.json

For each of ddim, ancestral and dpmpp2m and each call count N (= sampler steps: one model call per
step; classifier-free guidance batches its two halves into the same call), samples --num_samples
videos from --workdir with one seed and scores them with vdm_jax/evaluation.py against the same
real videos (the first --num_real of the run's eval split, summarised once); each --students
workdir adds one point: DDIM with the steps it was distilled for. FVD needs clips of >= 9 frames
and costs ~2.4 s per clip on a 2-core CPU (the I3D), so run it at scale only on an accelerator;
`--metrics colour_drift` is the cheap smoke test. Prints one JSON row per point.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

SAMPLERS = ("ddim", "ancestral", "dpmpp2m")


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="The trained model (the students' first teacher).")
  p.add_argument("--students", default="", help="Comma-separated distilled workdirs.")
  p.add_argument("--calls", default="1,2,4,8,16,32,64", help="Comma-separated model-call counts.")
  p.add_argument("--samplers", default=",".join(SAMPLERS))
  p.add_argument("--metrics", default="fvd,colour_drift")
  p.add_argument("--num_samples", type=int, default=64)
  p.add_argument("--num_real", type=int, default=0, help="0: as many as --num_samples.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=16, help="Videos per I3D / data batch.")
  p.add_argument("--output", default="", help="Also write the rows as a JSON list here.")
  return p.parse_args(argv)


def points(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
  """[(label, workdir, sampling options)]: every sampler at every call count, then each student."""
  from vdm_jax import checkpoints
  out = [(f"{s}{n}", args.workdir, {"sampler": s, "num_steps": n})
         for s in args.samplers.split(",") for n in (int(c) for c in args.calls.split(","))]
  for student in filter(None, args.students.split(",")):
    exp, _, _ = checkpoints.read_experiment(student)
    n = exp.distill.student_steps
    out.append((f"student{n}", student, {"sampler": "ddim", "num_steps": n}))
  return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
  import numpy as np

  from vdm_jax import checkpoints, evaluation
  from vdm_jax.generation import generate_from_workdir
  from vdm_jax.metrics import fvd as fvd_lib
  from vdm_jax.metrics import video_io
  metrics = tuple(args.metrics.split(","))
  exp, _, _ = checkpoints.read_experiment(args.workdir)
  evaluation.validate_request(metrics, args.num_samples, exp.data.num_frames)
  extractor = fvd_lib.I3DFeatureExtractor(batch_size=args.batch_size) if "fvd" in metrics else None
  real = evaluation.summarize_real(
      evaluation.dataset_batches(exp.data, args.num_real or args.num_samples, args.batch_size),
      extractor=extractor, colour_drift="colour_drift" in metrics)
  rows = []
  for label, workdir, sampling in points(args):
    videos, protocol = generate_from_workdir(workdir, num_samples=args.num_samples, seed=args.seed,
                                             **sampling)
    values = evaluation.compute_metrics(video_io.to_uint8(np.asarray(videos)), real, metrics=metrics,
                                        extractor=extractor)
    row = {"point": label, "workdir": workdir, "model_calls": sampling["num_steps"], **sampling,
           "guidance_weight": protocol.get("guidance_weight"), "num_samples": args.num_samples,
           "num_real": real.count, **values}
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  from vdm_jax.runtime import setup_runtime
  setup_runtime()
  rows = run(args)
  if args.output:
    with open(args.output, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1:])
