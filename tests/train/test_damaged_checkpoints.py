"""A damaged latest checkpoint end to end: the trainer resumes from the newest intact one, the sampler
samples from it, and --strict_checkpoints (strict_checkpoints=True) refuses with one line."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.train.conftest import cache_env, micro_config, read_checkpoint, steps_of
from vdm_jax import generation
from vdm_jax.checkpoints import CheckpointDamaged, Checkpointer
from vdm_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")  # an absl log line


def damaged_copy(straight_workdir: str, workdir: str) -> str:
  """A copy of the straight run (checkpoints 2 and 4) whose step 4 has an overwritten array file."""
  shutil.copytree(straight_workdir, workdir)
  state_dir = os.path.join(workdir, "checkpoints", "4", "state")
  path = max((os.path.join(f, n) for f, _, ns in os.walk(state_dir) for n in ns), key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[64::3] = bytes(b ^ 0x5A for b in data[64::3])
  open(path, "wb").write(bytes(data))
  return workdir


@pytest.fixture(scope="module")
def damaged(straight, tmp_path_factory):
  return damaged_copy(straight[0], str(tmp_path_factory.mktemp("damaged") / "run"))


def test_training_resumes_from_the_newest_intact_checkpoint(straight, tmp_path, train_data_dir,
                                                            monkeypatch, caplog):
  workdir = damaged_copy(straight[0], str(tmp_path / "run"))
  config = micro_config(train_data_dir)

  def not_this_far(*args, **kwargs):
    raise AssertionError("strict_checkpoints went on to build the train state")

  with monkeypatch.context() as m:
    m.setattr(loop, "create_train_state", not_this_far)
    with pytest.raises(CheckpointDamaged, match=r"step 4 in .* is damaged: .*; intact steps: \[2\]$"):
      loop.train_and_evaluate(config, workdir, strict_checkpoints=True)
  with caplog.at_level(logging.WARNING):
    assert loop.train_and_evaluate(config, workdir)["step"] == 4
  assert "step 4: it has the file state/" in caplog.text and "using step 2" in caplog.text
  # The damaged step was set aside and saved anew: the same as never damaged (resume is exact).
  assert steps_of(workdir) == [2, 4]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4.damaged"))
  with Checkpointer(os.path.join(workdir, "checkpoints"), create=False) as ckpt:
    assert ckpt.verify(4) is None
  resumed, resumed_data = read_checkpoint(workdir, 4)
  never_damaged, never_damaged_data = read_checkpoint(straight[0], 4)
  assert resumed_data == never_damaged_data
  jax.tree.map(np.testing.assert_array_equal, resumed, never_damaged)


def test_restore_model_falls_back_but_not_from_a_named_step(damaged, caplog):
  with caplog.at_level(logging.WARNING):
    model = generation.restore_model(damaged)
  assert model.step == 2 and model.manifest["step"] == 2
  assert "skipped damaged checkpoint(s)" in caplog.text and "step 4: it has the file" in caplog.text
  named = r"checkpoint step 4 in .* is damaged: it has the file .*; intact steps: \[2\]$"
  with pytest.raises(CheckpointDamaged, match=named):
    generation.restore_model(damaged, step=4)
  with pytest.raises(CheckpointDamaged, match="step 4"):
    generation.restore_model(damaged, fallback=False)
  with pytest.raises(CheckpointDamaged, match=named):  # before anything is compiled
    generation.generate_from_workdir(damaged, step=4, num_samples=1)
  assert steps_of(damaged) == [2, 4]  # sampling renames nothing


def _sample(workdir, out, cache_dir, *extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **cache_env(cache_dir)}
  command = [sys.executable, os.path.join(ROOT, "sample.py"), f"--workdir={workdir}",
             f"--output_dir={out}", "--num_samples=1", "--num_steps=2", "--progress_chunks=1", *extra]
  return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)


def test_sample_script_warns_or_refuses_with_one_line(damaged, tmp_path, compile_cache_dir):
  proc = _sample(damaged, tmp_path / "strict", compile_cache_dir, "--strict_checkpoints")
  errors = [line for line in proc.stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert len(errors) == 1 and errors[0].startswith("sample.py: checkpoint step 4 in "), errors
  assert "damaged" in errors[0] and errors[0].endswith("intact steps: [2]")
  assert not os.path.exists(tmp_path / "strict")

  proc = _sample(damaged, tmp_path / "out", compile_cache_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "skipped damaged checkpoint(s)" in proc.stderr and "using step 2" in proc.stderr
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
  assert json.load(open(tmp_path / "out" / "protocol.json"))["checkpoint_step"] == 2
