"""MetricWriter: TensorBoard events and JSONL actually written (and read back), nothing when disabled."""

import glob
import json
import os

import numpy as np

from vdm_jax.metrics.writers import MetricWriter


def _event_tags(workdir):
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0, "images": 0})
  acc.Reload()
  return acc


def test_writer_writes_events_jsonl_and_gifs(tmp_path):
  workdir = str(tmp_path / "run")
  with MetricWriter(workdir, enabled=True) as writer:
    writer.write_scalars(1, {"loss": np.float32(0.5), "lr": 1e-3})
    writer.write_scalars(2, {"loss": 0.25})
    writer.write_images(2, {"img": np.zeros((4, 5, 3), np.uint8)})
    paths = writer.write_videos(2, {"samples/video": np.zeros((2, 3, 4, 4, 1), np.uint8)})
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert lines == [{"step": 1, "loss": 0.5, "lr": 1e-3}, {"step": 2, "loss": 0.25}]
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert os.path.isfile(paths["samples/video"])
  assert paths["samples/video"].startswith(os.path.join(workdir, "samples"))
  acc = _event_tags(workdir)
  tags = acc.Tags()["tensors"]
  assert {"loss", "lr", "img", "samples/video"} <= set(tags)
  from tensorboard.util import tensor_util

  losses = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")]
  assert losses == [0.5, 0.25]


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = str(tmp_path / "off")
  writer = MetricWriter(workdir, enabled=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_videos(1, {"v": np.zeros((1, 2, 4, 4, 3), np.uint8)})
  writer.flush()
  writer.close()
  assert not os.path.exists(workdir)


def test_default_enabled_on_process_zero(tmp_path):
  writer = MetricWriter(str(tmp_path / "p0"))
  assert writer.enabled
  writer.close()
