"""train.py as a process: SIGTERM saves and exits 0, a rerun resumes and finishes with checkpoints,
logs and sample videos; two processes with 4 CPU devices each train as one 8-device group; config
errors (unknown keys, bad values, a batch larger than the dataset) end in one line, no traceback."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.train.conftest import cache_env, metric_rows, micro_flags, read_checkpoint, steps_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 420


def train_command(workdir, *extra):
  return [sys.executable, os.path.join(ROOT, "train.py"), "--config=configs/default.py:tiny",
          f"--workdir={workdir}", *micro_flags(),
          "--config.train.sample_every=0", *extra]


def base_env(data_dir):
  # $VDM_DATA_DIR: configs/default.py's data_dir=None cannot be overridden by a flag.
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", VDM_DATA_DIR=data_dir)


def single_process_env(data_dir, cache_dir):
  env = dict(base_env(data_dir), **cache_env(cache_dir))
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  return env


def wait_for_loss_row(workdir, proc, timeout_s):
  """Polls metrics.jsonl until a training step was logged (the loop is running)."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    assert proc.poll() is None, "train.py exited before its first step"
    if os.path.exists(path) and any("loss" in line for line in open(path)):
      return
    time.sleep(0.2)
  proc.kill()
  pytest.fail(f"no training step logged within {timeout_s} s")


def test_sigterm_saves_exits_cleanly_and_the_rerun_resumes(tmp_path, train_data_dir,
                                                            compile_cache_dir):
  workdir, log = str(tmp_path / "run"), tmp_path / "first.log"
  env = single_process_env(train_data_dir, compile_cache_dir)
  command = train_command(workdir, "--config.train.checkpoint_every=1000")
  with open(log, "w") as out:
    proc = subprocess.Popen(command + ["--config.train.num_steps=1000"], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    wait_for_loss_row(workdir, proc, TIMEOUT_S)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT_S) == 0, log.read_text()[-3000:]
  reached = [r["step"] for r in metric_rows(workdir) if "loss" in r][-1]
  assert 1 <= reached < 1000
  assert steps_of(workdir) == [reached]
  assert f"stopped at step {reached} on request" in log.read_text()

  final = reached + 2
  done = subprocess.run(command + [f"--config.train.num_steps={final}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"resumed from step {reached}" in done.stderr
  assert steps_of(workdir) == [reached, final]
  rows = [r for r in metric_rows(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == list(range(1, final + 1))
  assert all(np.isfinite(r["loss"]) for r in rows)
  files = [f for _, _, fs in os.walk(workdir) for f in fs]
  assert any(f.startswith("events.out.tfevents") for f in files)
  samples = os.listdir(os.path.join(workdir, "samples", f"step_{final:08d}"))
  assert any(f.endswith(".mp4") for f in samples) and any(f.endswith(".gif") for f in samples)


CONFIG_ERRORS = {
    "unknown_key": ("--config.train.bogus=1", r"config\.train has unknown keys \['bogus'\] \(nearest: "
                    r"'\w+'\); known keys: \[.*'log_every', 'num_steps'.*\]"),
    "interval_0": ("--config.train.checkpoint_every=0", r"train\.checkpoint_every=0 is out of range: it "
                   r"must be >= 1; change --config\.train\.checkpoint_every"),
    "negative_steps": ("--config.train.num_steps=-5", r"train\.num_steps=-5 is out of range"),
    "batch_over_dataset": ("--config.train.global_batch_size=65536", r"train\.global_batch_size=65536 "
                           r"is larger than the \d+ training examples of 'moving_shapes'"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_ERRORS))
def test_config_errors_end_in_one_line_before_anything_starts(name, tmp_path, train_data_dir,
                                                              compile_cache_dir):
  flag, message = CONFIG_ERRORS[name]
  workdir = str(tmp_path / "run")
  done = subprocess.run(train_command(workdir, flag), cwd=ROOT,
                        env=single_process_env(train_data_dir, compile_cache_dir),
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  assert done.returncode != 0
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert re.fullmatch(rf"train\.py: {message}.*", last), last
  assert not os.path.exists(workdir)  # refused before the workdir, the state or a compile


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one_group(tmp_path, train_data_dir, straight):
  workdir = str(tmp_path / "run")
  env = base_env(train_data_dir)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  port = free_port()
  command = train_command(workdir, "--config.train.num_steps=2",
                          "--config.train.checkpoint_every=2", "--cpu_devices=4",
                          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2")
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  procs = [subprocess.Popen(command + [f"--process_id={i}"], cwd=ROOT, env=env,
                            stdout=open(logs[i], "w"), stderr=subprocess.STDOUT) for i in range(2)]
  try:
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
  assert "process 1 of 2, 4 local / 8 global devices" in logs[1].read_text()
  assert steps_of(workdir) == [2]
  state, data_state = read_checkpoint(workdir, 2)
  assert int(state["step"]) == 2 and data_state["step"] == 2
  # The same global batches and seed as the one-process, 8-device run: the same losses.
  losses = [r["loss"] for r in metric_rows(workdir) if "loss" in r]
  reference = [r["loss"] for r in metric_rows(straight[0]) if "loss" in r][:2]
  np.testing.assert_allclose(losses, reference, rtol=1e-4)
  manifest = json.load(open(os.path.join(workdir, "checkpoints", "2", "manifest", "metadata")))
  assert manifest["mesh"]["data"] == 8
