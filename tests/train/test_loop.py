"""train_and_evaluate in-process: resume equals never stopping, the NaN guard, config errors,
and what a run leaves in its workdir."""

import os
import signal

import jax
import numpy as np
import pytest

from tests.train.conftest import metric_rows, micro_config, read_checkpoint, steps_of
from vdm_jax.train import loop


def on_batch(monkeypatch, call, action):
  """Runs action(host_batch) on the `call`-th host batch the loop makes global (the first one,
  call 1, only compiles the step; call k + 1 feeds step k)."""
  calls = []
  original = loop.host_to_global

  def wrapped(batch, mesh):
    calls.append(1)
    if len(calls) == call:
      batch = action(batch)
    return original(batch, mesh)

  monkeypatch.setattr(loop, "host_to_global", wrapped)


def test_straight_run_leaves_checkpoints_logs_and_samples(straight):
  workdir, last = straight
  assert last["step"] == 4 and np.isfinite(last["loss"])
  assert steps_of(workdir) == [2, 4]
  rows = [r for r in metric_rows(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) and r["learning_rate"] >= 0 for r in rows)
  assert any(f.startswith("events.out.tfevents") for _, _, fs in os.walk(workdir) for f in fs)
  samples = os.listdir(os.path.join(workdir, "samples", "step_00000004"))
  assert any(f.endswith(".mp4") for f in samples) and any(f.endswith(".gif") for f in samples)


def test_stop_and_resume_is_bit_identical(straight, tmp_path, train_data_dir, monkeypatch):
  workdir = str(tmp_path)
  config = micro_config(train_data_dir)
  # SIGTERM while step 2 is fed: the real handler asks the loop to save at step 2 and stop.
  on_batch(monkeypatch, 3, lambda b: (os.kill(os.getpid(), signal.SIGTERM), b)[1])
  assert loop.train_and_evaluate(config, workdir)["step"] == 2
  assert steps_of(workdir) == [2]
  monkeypatch.undo()
  assert loop.train_and_evaluate(config, workdir)["step"] == 4

  resumed, resumed_data = read_checkpoint(workdir, 4)
  never_stopped, never_stopped_data = read_checkpoint(straight[0], 4)
  assert resumed_data == never_stopped_data and resumed_data["step"] == 4
  assert jax.tree.structure(resumed) == jax.tree.structure(never_stopped)
  jax.tree.map(np.testing.assert_array_equal, resumed, never_stopped)
  losses = {r["step"]: r["loss"] for r in metric_rows(workdir) if "loss" in r}
  assert losses == {r["step"]: r["loss"] for r in metric_rows(straight[0]) if "loss" in r}


def test_nan_batch_raises_naming_the_step_and_saves_nothing_non_finite(
    tmp_path, train_data_dir, monkeypatch):
  config = micro_config(train_data_dir, train=dict(checkpoint_every=1, log_every=2))
  on_batch(monkeypatch, 3, lambda b: dict(b, video=np.full_like(b["video"], np.nan)))
  with pytest.raises(FloatingPointError, match="at step 2"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert steps_of(str(tmp_path)) == [1]
  state, _ = read_checkpoint(str(tmp_path), 1)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state) if x.dtype.kind == "f")


CONFIG_ERRORS = {
    "mesh_too_big": (dict(mesh=dict(data=16)), "does not fit the 8 devices"),
    "mesh_too_small": (dict(mesh=dict(data=2, fsdp=2)), "does not fit the 8 devices"),
    "batch_over_devices": (dict(train=dict(global_batch_size=12)), "does not divide over the 8"),
    "resolution_vs_levels": (dict(model=dict(channel_mult=(1, 1, 1), image_size=10),
                                  data=dict(resolution=10)), r"must divide by 2\*\*\(levels-1\) = 4"),
    "resolution_vs_image_size": (dict(data=dict(resolution=16)), "image_size"),
    "frames_vs_temporal_downsample": (dict(model=dict(channel_mult=(1, 2), temporal_downsample=(0,)),
                                           data=dict(num_frames=3)), "num_frames=3 must divide"),
    "unknown_dataset": (dict(data=dict(name="no_such_dataset")), "Unknown dataset name"),
    "unknown_key": (dict(model=dict(bogus_width=3)), r"unknown keys \['bogus_width'\]"),
}


@pytest.fixture
def no_compile(monkeypatch):
  """Fails the test if the loop gets as far as building the train state."""
  def fail(*args, **kwargs):
    raise AssertionError("the config error was not raised before building the train state")
  monkeypatch.setattr(loop, "create_train_state", fail)


@pytest.mark.parametrize("name", sorted(CONFIG_ERRORS))
def test_config_errors_raise_before_compiling(name, tmp_path, train_data_dir, no_compile):
  sections, message = CONFIG_ERRORS[name]
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(micro_config(train_data_dir, **sections), str(tmp_path))


def test_url_workdir_is_refused_before_anything_starts(train_data_dir, no_compile):
  with pytest.raises(ValueError, match="URLs are not supported"):
    loop.train_and_evaluate(micro_config(train_data_dir), "gs://bucket/run")


def test_unknown_section_raises(tmp_path, train_data_dir, no_compile):
  config = micro_config(train_data_dir)
  config.schedule = {"warmup": 1}
  with pytest.raises(ValueError, match=r"unknown sections \['schedule'\]"):
    loop.train_and_evaluate(config, str(tmp_path))


def test_incompatible_workdir_raises(straight, train_data_dir, no_compile):
  config = micro_config(train_data_dir, model=dict(base_channels=16, head_dim=16))
  with pytest.raises(ValueError, match=r"incompatible config:\n  model.base_channels"):
    loop.train_and_evaluate(config, straight[0])
