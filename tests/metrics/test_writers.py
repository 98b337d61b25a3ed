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


def test_resume_step_drops_the_rows_a_resumed_run_replays(tmp_path):
  workdir = str(tmp_path)
  with MetricWriter(workdir, enabled=True) as writer:
    writer.write_scalars(0, {"compile_seconds": 9.0})
    for step in range(1, 6):
      writer.write_scalars(step, {"loss": float(step)})
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path, "a") as f:
    f.write('{"note": "no step"}\n{"step": 6, "lo')  # a row without a step; one torn by a kill -9
  # Checkpoint at step 3, killed at step 6: the resumed run replays steps 4, 5, 6.
  with MetricWriter(workdir, enabled=True, resume_step=3) as writer:
    for step in range(4, 7):
      writer.write_scalars(step, {"loss": 10.0 + step})
  rows = [json.loads(line) for line in open(path)]
  assert rows == [{"step": 0, "compile_seconds": 9.0}, {"step": 1, "loss": 1.0},
                  {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0}, {"note": "no step"},
                  {"step": 4, "loss": 14.0}, {"step": 5, "loss": 15.0}, {"step": 6, "loss": 16.0}]
  steps = [r["step"] for r in rows if "step" in r]
  assert len(steps) == len(set(steps))


def test_no_resume_step_keeps_the_file(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 7, "loss": 1.0}\n')
  MetricWriter(str(tmp_path), enabled=True).close()
  MetricWriter(str(tmp_path), enabled=True, resume_step=7).close()
  assert path.read_text() == '{"step": 7, "loss": 1.0}\n'
