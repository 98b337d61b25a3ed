"""sample.py end to end on checkpoints written on 8 devices: a class-conditional model with rising
classifier-free guidance sampled on 2 devices (files, npz, protocol JSON), a model trained with
conditioning-frame channels, and the script's clean errors."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import configs.default
from vdm_jax import checkpoints, data, generation
from vdm_jax.config import ExperimentConfig
from vdm_jax.model import count_params
from vdm_jax.parallel import make_mesh
from vdm_jax.train.optimizer import make_optimizer
from vdm_jax.train.state import create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, RES = 4, 8


def write_checkpoint(workdir: str, data_dir: str, step: int = 5, **model: int) -> ExperimentConfig:
  """A freshly initialised micro model saved as train.py saves it (state dict + manifest)."""
  c = configs.default.get_config("tiny")
  c.data.update(num_frames=T, resolution=RES, data_dir=data_dir)
  c.model.update(base_channels=8, channel_mult=(1,), attention_resolutions=(RES,), image_size=RES,
                 head_dim=8, **{k: v for k, v in model.items() if k != "cond_frames"})
  c.train.update(cond_frames=model.get("cond_frames", 0))
  c.sample.update(num_steps=2, fps=4)
  exp = ExperimentConfig.from_config_dict(c)
  mesh = make_mesh(**dataclasses.asdict(exp.mesh))
  _, _, state = create_train_state(exp.model, make_optimizer(exp.optim, 10), mesh, exp.train.seed)
  manifest = checkpoints.make_manifest(exp, mesh, dataclasses.asdict(data.dataset_info(exp.data)),
                                       count_params(state["params"]))
  manifest["step"] = step
  with checkpoints.Checkpointer(checkpoints.checkpoint_dir(workdir, create=True)) as ckpt:
    ckpt.save(step, state, data_state={}, manifest=manifest)
  return exp


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _run(args, devices=2):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.run([sys.executable, os.path.join(REPO, "sample.py")] + args, env=env,
                        capture_output=True, text=True, timeout=400)


def test_script_class_conditional_with_rising_guidance_on_two_devices(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  write_checkpoint(workdir, data_dir, num_classes=5)
  out = tmp_path / "out"
  proc = _run([f"--workdir={workdir}", f"--output_dir={out}", "--num_samples=3", "--num_steps=2",
               "--guidance_weight=1", "--guidance_weight_end=2.5", "--labels=1,4,2", "--seed=3",
               "--progress_chunks=2"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Samples: {out}" in proc.stdout
  # Nothing a user would read as a fault: no Orbax metadata warning, no TPU probe message.
  assert "Metadata file does not exist" not in proc.stderr, proc.stderr[-3000:]
  assert "Unable to initialize backend" not in proc.stderr, proc.stderr[-3000:]
  assert "oneDNN custom operations" not in proc.stderr, proc.stderr[-3000:]
  for name in ["sample_0000.mp4", "sample_0002.gif", "sample_grid.mp4", "sample_grid.gif",
               "sample_strip.png"]:
    assert os.path.getsize(out / name) > 0, name
  videos = np.load(out / "sample.npz")["videos"]
  assert videos.shape == (3, T, RES, RES, 3) and videos.dtype == np.uint8
  assert videos.std() > 1.0
  protocol = json.load(open(out / "protocol.json"))
  assert protocol["checkpoint_step"] == 5 and protocol["use_ema"] is True
  assert protocol["sampler"] == "ddim" and protocol["num_steps"] == 2 and protocol["seed"] == 3
  assert protocol["guidance_weight"] == 1.0 and protocol["guidance_weight_end"] == 2.5
  assert protocol["labels"] == [1, 4, 2] and protocol["fps"] == 4
  assert protocol["devices"]["count"] == 2 and protocol["batch_size"] == 4
  assert protocol["compilations"] == 1 and "jax" in protocol["library_versions"]


def test_script_errors(tmp_path, data_dir):
  proc = _run([f"--workdir={tmp_path}"], devices=1)
  assert proc.returncode != 0
  assert "sample.py: no checkpoint directory" in proc.stderr and "Traceback" not in proc.stderr
  workdir = str(tmp_path / "run")
  write_checkpoint(workdir, data_dir)
  proc = _run([f"--workdir={workdir}", "--guidance_weight=2"], devices=1)
  assert proc.returncode != 0 and "unconditional" in proc.stderr and "Traceback" not in proc.stderr


def test_frame_conditioned_model_keeps_known_frames_and_gives_ground_truth(tmp_path, data_dir):
  """Channels-conditioned model (as evaluate.py calls it): known frames from the eval split."""
  workdir = str(tmp_path / "run")
  write_checkpoint(workdir, data_dir, cond_channels=3, cond_frames=2)
  videos, protocol = generation.generate_from_workdir(workdir, num_samples=2, num_steps=2,
                                                    guidance_weight=1.0)
  truth = protocol["ground_truth"]
  assert videos.shape == truth.shape == (2, T, RES, RES, 3)
  np.testing.assert_array_equal(videos[:, :2], truth[:, :2])
  assert protocol["frame_method"] == "model" and protocol["cond_frames"] == 2
  with pytest.raises(ValueError, match="must exceed cond_frames"):
    generation.generate_from_workdir(workdir, num_frames=2)
