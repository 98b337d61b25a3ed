"""One run per workdir (the lock, its stale-lock rules and its heartbeat), the write probe, one-line
errors for a workdir in use and a failed checkpoint save, and metrics.jsonl after a replay."""

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.train.conftest import metric_rows, micro_config, read_checkpoint, steps_of
from tests.train.test_train_script import ROOT, TIMEOUT_S, single_process_env, train_command
from vdm_jax import checkpoints
from vdm_jax.train import loop
from vdm_jax.train.workdir import (
  LOCK_NAME,
  CheckpointSaveError,
  WorkdirInUseError,
  WorkdirLock,
  WorkdirNotWritableError,
  check_writable,
)


def write_lock(workdir, **info):
  os.makedirs(workdir, exist_ok=True)
  info = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2024-01-02T03:04:05Z",
          "command": "train.py --workdir=elsewhere", **info}
  path = os.path.join(workdir, LOCK_NAME)
  with open(path, "w") as f:
    json.dump(info, f)
  return path


def read_lock(workdir):
  with open(os.path.join(workdir, LOCK_NAME)) as f:
    return json.load(f)


def dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_is_taken_and_released_also_on_an_exception(tmp_path):
  workdir = str(tmp_path / "run")
  with WorkdirLock(workdir) as lock:
    lock.acquire()
    info = read_lock(workdir)
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["started"].endswith("Z") and info["command"]
  assert not os.path.exists(os.path.join(workdir, LOCK_NAME))
  with pytest.raises(KeyError), WorkdirLock(workdir) as lock:
    lock.acquire()
    raise KeyError("boom")
  assert not os.path.exists(os.path.join(workdir, LOCK_NAME))


def test_second_acquire_is_refused_in_one_line(tmp_path):
  workdir = str(tmp_path)
  with WorkdirLock(workdir) as first:
    first.acquire()
    expected = (f"workdir {workdir} is in use by pid {os.getpid()} on host {socket.gethostname()} "
                f"since {first.info['started']} (command ")
    with pytest.raises(WorkdirInUseError) as refused, WorkdirLock(workdir) as second:
      second.acquire()
    message = str(refused.value)
    assert message.startswith(expected) and "\n" not in message
    assert message.endswith("stop that run or use another --workdir")
    assert read_lock(workdir) == first.info  # the refused one leaves the holder's lock alone


def test_lock_of_another_live_process_is_refused(tmp_path):
  write_lock(str(tmp_path), pid=os.getppid())
  with pytest.raises(WorkdirInUseError, match=f"in use by pid {os.getppid()} on host"):
    WorkdirLock(str(tmp_path)).acquire()


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
  pid = dead_pid()
  write_lock(str(tmp_path), pid=pid)
  with caplog.at_level(logging.WARNING), WorkdirLock(str(tmp_path)) as lock:
    lock.acquire()
    assert read_lock(str(tmp_path))["pid"] == os.getpid()
  assert f"taking over the stale lock of pid {pid}" in caplog.text
  assert "that process is gone" in caplog.text


def test_lock_from_another_host_is_refused_until_its_heartbeat_is_old(tmp_path):
  path = write_lock(str(tmp_path), host="another-host", pid=1)
  with pytest.raises(WorkdirInUseError, match="on host another-host .* not refreshed for 10 minutes"):
    WorkdirLock(str(tmp_path)).acquire()
  old = time.time() - 11 * 60
  os.utime(path, (old, old))
  with WorkdirLock(str(tmp_path)) as lock:
    lock.acquire()
    assert read_lock(str(tmp_path))["host"] == socket.gethostname()


def test_heartbeat_refreshes_the_lock(tmp_path):
  with WorkdirLock(str(tmp_path), heartbeat_s=0.05) as lock:
    lock.acquire()
    old = time.time() - 3600
    os.utime(lock.path, (old, old))
    deadline = time.monotonic() + 10
    while os.stat(lock.path).st_mtime < time.time() - 60 and time.monotonic() < deadline:
      time.sleep(0.05)
    assert os.stat(lock.path).st_mtime > time.time() - 60


def test_write_probe_names_the_path_and_the_os_error(tmp_path, monkeypatch):
  a_file = tmp_path / "file"
  a_file.write_text("not a directory")
  with pytest.raises(WorkdirNotWritableError, match=f"cannot use {a_file} as --workdir: it is a file"):
    check_writable(str(a_file))
  below_a_file = str(a_file / "run")
  with pytest.raises(WorkdirNotWritableError, match=r"cannot write in .*/file/run: \[Errno 20\] Not a"):
    check_writable(below_a_file)

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(WorkdirNotWritableError) as refused:
    check_writable(str(tmp_path / "full"))
  assert f"cannot write in {tmp_path / 'full'}: [Errno 28] No space left on device" in str(refused.value)
  assert os.listdir(tmp_path / "full") == []  # the probe file is deleted even then


@pytest.fixture
def no_compile(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("the workdir error was not raised before building the train state")
  monkeypatch.setattr(loop, "create_train_state", fail)


def test_train_is_refused_on_a_locked_or_unwritable_workdir_before_compiling(
    tmp_path, train_data_dir, no_compile):
  workdir = str(tmp_path / "run")
  with WorkdirLock(workdir) as holder:
    holder.acquire()
    with pytest.raises(WorkdirInUseError, match="is in use by pid"):
      loop.train_and_evaluate(micro_config(train_data_dir), workdir)
    assert read_lock(workdir) == holder.info
  (tmp_path / "file").write_text("")
  with pytest.raises(WorkdirNotWritableError, match="is a file"):
    loop.train_and_evaluate(micro_config(train_data_dir), str(tmp_path / "file"))


def stop_on_batch(monkeypatch, call):
  """SIGTERM (the loop saves and stops) while the `call`-th host batch is made global."""
  calls = []
  original = loop.host_to_global

  def wrapped(batch, mesh):
    calls.append(1)
    if len(calls) == call:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(batch, mesh)
  monkeypatch.setattr(loop, "host_to_global", wrapped)


ENOSPC_TEXT = ('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database: No space left on device '
               "[os_error_code='28']\nsecond line of a long report")


def test_failed_async_save_stops_the_run_in_one_line_and_the_resume_logs_each_step_once(
    tmp_path, train_data_dir, monkeypatch):
  workdir = str(tmp_path)
  original = checkpoints.Checkpointer.save

  def save(self, step, *args, **kwargs):
    if step == 4:
      return  # accepted as an async save that will fail in the background...
    if step == 6:  # ...and surfaces at the next save, as Orbax's does (tensorstore's ValueError)
      raise ValueError(ENOSPC_TEXT)
    return original(self, step, *args, **kwargs)
  monkeypatch.setattr(checkpoints.Checkpointer, "save", save)
  config = micro_config(train_data_dir, train=dict(num_steps=8, checkpoint_every=2))
  with pytest.raises(CheckpointSaveError) as failed:
    loop.train_and_evaluate(config, workdir)
  assert str(failed.value) == (
      f"saving checkpoint step 4 in {workdir}/checkpoints failed: {ENOSPC_TEXT.splitlines()[0]}; "
      "the previous checkpoint 2 is intact: fix the cause and run the same command to resume from it")
  assert not os.path.exists(os.path.join(workdir, LOCK_NAME))
  assert steps_of(workdir) == [2]
  state, data_state = read_checkpoint(workdir, 2)
  assert int(state["step"]) == 2 and data_state["step"] == 2
  assert [r["step"] for r in metric_rows(workdir) if "loss" in r] == [1, 2, 3, 4, 5, 6]

  monkeypatch.undo()
  stop_on_batch(monkeypatch, 3)  # resumed at 2: call 3 feeds step 4
  assert loop.train_and_evaluate(config, workdir)["step"] == 4
  assert [r["step"] for r in metric_rows(workdir) if "loss" in r] == [1, 2, 3, 4]


def test_failed_last_save_names_its_step(tmp_path, train_data_dir, monkeypatch):
  original = checkpoints.Checkpointer.save

  def save(self, step, *args, **kwargs):
    if step != 2:
      return original(self, step, *args, **kwargs)

  def wait(self):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/some/tmp/file")
  monkeypatch.setattr(checkpoints.Checkpointer, "save", save)
  monkeypatch.setattr(checkpoints.Checkpointer, "wait_until_finished", wait)
  stop_on_batch(monkeypatch, 3)  # stops after the save of step 2
  with pytest.raises(CheckpointSaveError, match=r"step 2 in .* failed: \[Errno 28\] No space left on "
                     r"device: '/some/tmp/file'; no earlier checkpoint was written$"):
    loop.train_and_evaluate(micro_config(train_data_dir), str(tmp_path))


def test_a_second_train_py_on_the_same_workdir_exits_in_one_line(tmp_path, train_data_dir,
                                                                 compile_cache_dir):
  workdir = str(tmp_path / "run")
  env = single_process_env(train_data_dir, compile_cache_dir)
  command = train_command(workdir, "--config.train.num_steps=1000",
                          "--config.train.checkpoint_every=1000")
  with open(tmp_path / "first.log", "w") as log:
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.exists(os.path.join(workdir, LOCK_NAME)):
      assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
      time.sleep(0.1)
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert first.poll() is None and read_lock(workdir)["pid"] == first.pid
  finally:
    first.kill()
    first.wait()
  assert second.returncode != 0
  assert "Traceback" not in second.stderr
  last_line = second.stderr.strip().splitlines()[-1]
  assert last_line.startswith(f"train.py: workdir {workdir} is in use by pid {first.pid} on host ")
  assert last_line.endswith("stop that run or use another --workdir")


def test_resume_allows_compute_only_model_changes_and_refuses_the_rest():
  from vdm_jax.config import ExperimentConfig
  from vdm_jax.train.workdir import check_workdir_compatible
  saved = ExperimentConfig.from_config_dict({}).to_dict()
  del saved["model"]["backbone"]  # a checkpoint older than a field compares as its default
  for change in ({"attention_impl": "xla"}, {"attention_chunk_size": 64}):
    check_workdir_compatible({"config": saved}, ExperimentConfig.from_config_dict({"model": change}), "w")
  with pytest.raises(ValueError, match="model.base_channels: checkpoint 32 vs config 64"):
    check_workdir_compatible({"config": saved},
                             ExperimentConfig.from_config_dict({"model": {"base_channels": 64}}), "w")
