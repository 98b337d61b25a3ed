"""Shared fixtures of the training tests: one dataset build, one compilation cache, a micro config.

The micro config is configs/default.py:tiny with a one-level, 8-channel U-Net on 4 frames of 8x8:
the loop, sharding, checkpoint and resume logic are what these tests check, and XLA's compile time
(tens of seconds per step program on 2 cores) is what they pay for, so the model is as small as the
code allows. A persistent compilation cache, shared by this package's tests and the subprocesses
they start, compiles each distinct program once per session.
"""

import json
import os

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from configs.default import get_config
from vdm_jax import checkpoints, data
from vdm_jax.train.loop import train_and_evaluate

_CACHE_OPTIONS = {"jax_compilation_cache_dir": None,
                  "jax_persistent_cache_min_compile_time_secs": 0.0,
                  "jax_persistent_cache_min_entry_size_bytes": 0}

# norm_groups=4: two channels per GroupNorm group. With one channel per group (8 channels, the default
# 32 groups) a bias in front of a norm gets an exactly-zero gradient, which Adam turns into
# lr-sized updates of float noise, and 1-device vs 8-device parameters could not be compared.
MICRO_MODEL = dict(base_channels=8, channel_mult=(1,), attention_resolutions=(), head_dim=8,
                   emb_mlp_layers=1, image_size=8, norm_groups=4)
MICRO_DATA = dict(num_frames=4, resolution=8)
# A learning rate independent of train.num_steps: runs of any length compile the same step.
MICRO_OPTIM = dict(schedule="constant")


@pytest.fixture(scope="session")
def train_data_dir(tmp_path_factory):
  """A data dir with moving_shapes built once (the first dataset_info call builds it)."""
  path = str(tmp_path_factory.mktemp("train_tfds"))
  data.dataset_info(data.DataConfig(name="moving_shapes", data_dir=path, **MICRO_DATA))
  return path


@pytest.fixture(scope="session")
def compile_cache_dir(tmp_path_factory):
  """A fresh cache per session; $VDM_TEST_COMPILATION_CACHE keeps one across sessions."""
  return os.environ.get("VDM_TEST_COMPILATION_CACHE") or str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session", autouse=True)
def persistent_compilation_cache(compile_cache_dir):
  """Turns JAX's persistent compilation cache on from the first test here to the session's end."""
  values = dict(_CACHE_OPTIONS, jax_compilation_cache_dir=compile_cache_dir)
  previous = {name: getattr(jax.config, name) for name in values}
  for name, value in values.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield
  for name, value in previous.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def cache_env(cache_dir: str) -> dict[str, str]:
  """Environment variables giving a subprocess the same compilation cache."""
  return {"JAX_COMPILATION_CACHE_DIR": cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def micro_config(data_dir: str, **sections):
  """configs/default.py:tiny with the micro model and data; `sections` update each section."""
  config = get_config("tiny")
  config.data.update(data_dir=data_dir, **MICRO_DATA)
  config.model.update(**MICRO_MODEL)
  config.optim.update(**MICRO_OPTIM)
  config.train.update(num_steps=4, log_every=1, checkpoint_every=2, sample_every=0)
  config.sample.update(num_samples=8, num_steps=2)
  for name, values in sections.items():
    config[name].update(**values)
  return config


def micro_flags() -> list[str]:
  """The same micro overrides as command-line flags for train.py (after --config=...:tiny)."""
  flags = [f"--config.data.{k}={v}" for k, v in MICRO_DATA.items()]
  for k, v in MICRO_MODEL.items():
    flags.append(f"--config.model.{k}={v!r}")
  flags += [f"--config.optim.{k}={v}" for k, v in MICRO_OPTIM.items()]
  return flags + ["--config.train.log_every=1", "--config.sample.num_steps=2"]


def read_checkpoint(workdir, step):
  """(state as numpy, data iterator state) of checkpoint `step`, restored onto one device."""
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), create=False)
  saved = ckpt._manager.item_metadata(step)["state"]  # shapes and dtypes of the saved tree
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
  state, data_state, _ = ckpt.restore(step, target=target)
  ckpt.close()
  return jax.tree.map(np.asarray, state), data_state


def steps_of(workdir):
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), create=False)
  steps = ckpt.all_steps()
  ckpt.close()
  return steps


def metric_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def straight(tmp_path_factory, train_data_dir, persistent_compilation_cache):
  """Four steps in one go: (workdir, returned metrics)."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  return workdir, train_and_evaluate(micro_config(train_data_dir), workdir)
