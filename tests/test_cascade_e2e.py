"""A two-stage cascade end to end: a micro base model (4 frames of 8x8) and a micro temporal
super-resolution stage (8 frames of 8x8 from every other frame) trained for two steps each through
train.py, then sampled as a chain through sample.py --cascade; and the script's one-line refusal of
stages that do not chain. The two trainings run side by side; one compilation cache serves all."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vdm_jax import data

pytestmark = pytest.mark.slow  # two train.py and three sample.py processes: ~160 s of CPU
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO_MODEL = dict(base_channels=8, channel_mult=(1,), attention_resolutions=(), head_dim=8,
                   emb_mlp_layers=1, image_size=8, norm_groups=4)
COMMON = ["--config.data.resolution=8", "--config.optim.schedule=constant",
          "--config.train.num_steps=2", "--config.train.checkpoint_every=2",
          "--config.train.sample_every=0", "--config.train.log_every=1",
          "--config.sample.num_steps=2", "--config.sample.num_samples=8"]
COMMON += [f"--config.model.{k}={v!r}" for k, v in MICRO_MODEL.items()]
STAGES = {
    "base": ["--config=configs/default.py:tiny", "--config.data.num_frames=4",
             "--config.data.frame_stride=2"],
    "tsr": ["--config=configs/cascade_tsr.py:tiny", "--config.data.num_frames=8",
            "--config.cascade.temporal_factor=2", "--config.cascade.aug_level_max=0.3"],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """moving_shapes built once (the trainings would race to build it), one compilation cache."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  data.dataset_info(data.DataConfig(name="moving_shapes", data_dir=data_dir, num_frames=4,
                                    resolution=8))
  cache = os.environ.get("VDM_TEST_COMPILATION_CACHE") or str(tmp_path_factory.mktemp("cache"))
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", VDM_DATA_DIR=data_dir,
              XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=ROOT,
              JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
  """{stage: workdir} of the two stages, trained side by side through train.py."""
  root = tmp_path_factory.mktemp("cascade")
  workdirs = {name: str(root / name) for name in STAGES}
  procs = {name: subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "train.py"), *flags, *COMMON,
       f"--workdir={workdirs[name]}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for name, flags in STAGES.items()}
  for name, proc in procs.items():
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, f"train.py ({name}) failed:\n{out[-3000:]}"
  return workdirs


def sample(env, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=400)


def test_a_trained_two_stage_cascade_samples_end_to_end(tmp_path, env, trained):
  # The SR stage's own periodic samples super-resolve degraded eval clips.
  with open(os.path.join(trained["tsr"], "samples", "step_00000002", "protocol.json")) as f:
    assert json.load(f)["lowres_source"] == "moving_shapes/test degraded"
  out = tmp_path / "out"
  result = sample(env, f"--cascade={trained['base']},{trained['tsr']}", f"--output_dir={out}",
                  "--num_samples=8", "--cascade_aug_levels=0.25", "--seed=3")
  assert result.returncode == 0, result.stderr[-3000:]
  final = np.load(out / "sample.npz")["videos"]
  first = np.load(out / "stage0" / "sample.npz")["videos"]
  assert final.shape == (8, 8, 8, 8, 3) and final.dtype == np.uint8
  assert first.shape == (8, 4, 8, 8, 3)
  with open(out / "protocol.json") as f:
    protocol = json.load(f)
  chain = protocol["cascade"]
  assert [os.path.basename(s["workdir"]) for s in chain] == ["base", "tsr"]
  assert [s["num_frames"] for s in chain] == [4, 8]
  assert chain[1]["aug_level"] == protocol["aug_level"] == 0.25
  assert chain[1]["lowres_source"] == "previous stage" and "aug_level" not in chain[0]
  assert chain[0]["output_dir"] == str(out / "stage0") and protocol["seed"] == 3


def test_stages_that_do_not_chain_are_refused_in_one_line(env, trained):
  result = sample(env, f"--cascade={trained['tsr']},{trained['base']}")
  assert result.returncode != 0
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("sample.py: the first cascade stage") and "super-resolution" in message
