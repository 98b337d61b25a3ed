r"""Videos/s of the training input pipeline (default DataConfig).

  python -m benchmarks.input_pipeline --batch_size=8 --steps=50

Prints JSON: videos/s of the iterator alone, and with a competing busy thread
standing in for the train step (the input must out-run the step's
consumption, about 20-60 videos/s for the default CPU run).
"""

import json
import threading
import time

import numpy as np
from absl import app, flags

from vdm_jax import data

_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 50, "Batches timed.")
_IMAGE_FRAMES = flags.DEFINE_integer("image_frames", 0, "K appended frames.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")


def _videos_per_s(config: data.DataConfig, busy: bool) -> float:
  it = data.create_train_iterator(config, _BATCH.value, seed=0,
                                  process_index=0, process_count=1)
  next(it)  # warm up: open files, fill the prefetch queue
  stop = threading.Event()
  def burn():  # numpy matmuls release the GIL like an XLA step does
    a = np.random.rand(512, 512).astype(np.float32)
    while not stop.is_set():
      a = a @ a / 512.0
  worker = threading.Thread(target=burn, daemon=True)
  if busy:
    worker.start()
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    next(it)
  elapsed = time.perf_counter() - start
  stop.set()
  it.close()
  return _STEPS.value * _BATCH.value / elapsed


def main(argv):
  del argv
  config = data.DataConfig(data_dir=_DATA_DIR.value,
                           image_frames=_IMAGE_FRAMES.value)
  result = {"config": config.name, "batch_size": _BATCH.value,
            "num_frames": config.num_frames, "resolution": config.resolution,
            "image_frames": config.image_frames,
            "videos_per_s_alone": round(_videos_per_s(config, False), 1),
            "videos_per_s_beside_busy_step": round(
                _videos_per_s(config, True), 1)}
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
