"""Quality against model calls: FVD and temporal metrics of few-step samplers and distilled students.

    python -m benchmarks.fewstep --workdir runs/default --students runs/distill/steps_4,... \
        --calls 1,2,4,8,16,32,64,256 --num_samples 256 --num_frames 16 --out_dir runs/fewstep

For each of ddim, ancestral and dpmpp2m and each call count N (= sampler steps: one model call per
step and block), samples --num_samples videos of --num_frames frames from --workdir with one seed
(longer than the model's clips: extended with reconstruction guidance, the model's default
overlap) and scores them with vdm_jax/evaluation.py against the first --num_samples clips of the
run's eval split (their I3D statistics cached in --cache_dir, so computed once); each --students
workdir adds one point: DDIM with the steps it was distilled for. Every point is written to
OUT_DIR/<point>.json as soon as it is done, and a rerun skips the points already there, so a
killed run resumes. At the end: OUT_DIR/fewstep.json (all rows), fewstep.md (the table) and
fewstep.png (FVD against calls, log2 axis). The cost column is sampling wall time per video,
including one compile of the sampler (tens of seconds in hours of sampling at 256 videos).
FVD needs >= 9 frames and the I3D costs about 1.1 s a clip on 2 quiet CPU cores: the full curve
(25 points at 256 videos) is hours of CPU; `--metrics colour_drift` is the cheap smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

SAMPLERS = ("ddim", "ancestral", "dpmpp2m")


def parse_args(argv: list[str]) -> argparse.Namespace:
  from vdm_jax.metrics.temporal import TEMPORAL_METRICS
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="The trained model (the students' first teacher).")
  p.add_argument("--students", default="", help="Comma-separated distilled workdirs.")
  p.add_argument("--calls", default="1,2,4,8,16,32,64,256", help="Comma-separated model-call counts.")
  p.add_argument("--samplers", default=",".join(SAMPLERS))
  p.add_argument("--metrics", default=",".join(("fvd", "colour_drift") + TEMPORAL_METRICS))
  p.add_argument("--num_samples", type=int, default=256)
  p.add_argument("--num_frames", type=int, default=0, help="0: the model's clip length.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=16, help="Videos per I3D / data batch.")
  p.add_argument("--cache_dir", default="~/.cache/vdm_jax/fvd_stats", help="Real I3D statistics ('' off).")
  p.add_argument("--out_dir", required=True, help="Per-point JSON, the table and the plot go here.")
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
  from vdm_jax import checkpoints, evaluation
  from vdm_jax.metrics import fvd as fvd_lib
  metrics = tuple(args.metrics.split(","))
  exp, _, _ = checkpoints.read_experiment(args.workdir)
  data = dataclasses.replace(exp.data, num_frames=args.num_frames or exp.data.num_frames)
  evaluation.validate_request(metrics, args.num_samples, data.num_frames)
  plan = points(args)  # reads every student's manifest before anything expensive
  extractor = fvd_lib.I3DFeatureExtractor(batch_size=args.batch_size) if "fvd" in metrics else None
  os.makedirs(args.out_dir, exist_ok=True)
  rows = []
  for label, workdir, sampling in plan:
    path = os.path.join(args.out_dir, f"{label}.json")
    if not os.path.exists(path):
      evaluation.evaluate(data, workdir=workdir, num_samples=args.num_samples, metrics=metrics,
                          output=path, cache_dir=os.path.expanduser(args.cache_dir) or None,
                          batch_size=args.batch_size, seed=args.seed, extractor=extractor, **sampling)
    rows.append(row_of(label, sampling, path))
    print(json.dumps(rows[-1]), flush=True)
  return rows


def row_of(label: str, sampling: dict[str, Any], path: str) -> dict[str, Any]:
  """One curve point from its evaluation JSON."""
  with open(path) as f:
    results = json.load(f)
  gen = results["protocol"]["generated"]
  return {"point": label, **sampling, "model_calls": sampling["num_steps"],
          "workdir": gen["source"], "num_samples": gen["count"], "shape": gen["shape"],
          "seconds_per_video": gen["seconds"] / gen["count"], **results["metrics"]}


def table(rows: list[dict[str, Any]]) -> str:
  """Markdown: a row per point, FVD, colour drift/shift ratios and cost."""
  cols = [("fvd", "FVD", "{:.1f}"), ("colour_drift_ratio", "colour drift / real", "{:.2f}"),
          ("colour_shift_ratio", "colour shift / real", "{:.2f}"),
          ("object_acceleration_ratio", "acceleration / real", "{:.2f}"),
          ("seconds_per_video", "s / video", "{:.3f}")]
  cols = [c for c in cols if any(c[0] in r for r in rows)]
  lines = ["| point | calls | " + " | ".join(c[1] for c in cols) + " |",
           "|---|---|" + "---|" * len(cols)]
  for r in rows:
    cells = [fmt.format(r[k]) if k in r else "" for k, _, fmt in cols]
    lines.append(f"| {r['point']} | {r['model_calls']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str, key: str = "fvd") -> None:
  """A PNG of `key` against model calls (log2 x), a line per sampler, students as dots."""
  import math

  from PIL import Image, ImageDraw
  pts = [(r["point"].rstrip("0123456789"), math.log2(r["model_calls"]), r[key]) for r in rows
         if key in r and math.isfinite(r[key])]
  if not pts:
    return
  w, h, m = 640, 400, 50
  xs, ys = [p[1] for p in pts], [p[2] for p in pts]
  x0, x1, y1 = min(xs), max(max(xs), min(xs) + 1), max(ys) * 1.05
  sx = lambda x: m + (x - x0) / (x1 - x0) * (w - 2 * m)
  sy = lambda y: h - m - y / y1 * (h - 2 * m)
  img = Image.new("RGB", (w, h), "white")
  d = ImageDraw.Draw(img)
  d.line([(m, m), (m, h - m), (w - m, h - m)], fill="black")
  d.text((m, 10), f"{key} against model calls (log2)", fill="black")
  for x in range(int(x0), int(x1) + 1):
    d.text((sx(x) - 6, h - m + 6), str(2 ** x), fill="black")
  for frac in (0.0, 0.5, 1.0):
    d.text((4, sy(frac * y1) - 6), f"{frac * y1:.0f}", fill="black")
  colours = {"ddim": "blue", "ancestral": "red", "dpmpp2m": "green", "student": "purple"}
  for i, (name, colour) in enumerate(colours.items()):
    line = sorted((sx(x), sy(y)) for n, x, y in pts if n == name)
    if len(line) > 1 and name != "student":
      d.line(line, fill=colour, width=2)
    for cx, cy in line:
      d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
    d.text((w - m - 80, m + 14 * i), name, fill=colour)
  img.save(path)


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  from benchmarks.common import setup_devices
  from vdm_jax.runtime import setup_runtime
  setup_runtime()
  setup_devices(-1, batch=args.batch_size)  # one CPU device per core, as sample.py
  rows = run(args)
  with open(os.path.join(args.out_dir, "fewstep.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(args.out_dir, "fewstep.md"), "w") as f:
    f.write(table(rows))
  plot(rows, os.path.join(args.out_dir, "fewstep.png"))
  print(table(rows))


if __name__ == "__main__":
  main(sys.argv[1:])
