"""generation.plan refuses a sample count this machine cannot hold, before anything is read or
compiled (configs/default.py:tiny, no checkpoint needed)."""

import pytest

import configs.default
from vdm_jax.config import ExperimentConfig
from vdm_jax.generation import GenerateOptions, options_from, plan
from vdm_jax.parallel import host

GiB = 2**30


@pytest.fixture(scope="module")
def exp():
  return ExperimentConfig.from_config_dict(configs.default.get_config("tiny"))


def test_a_sample_count_that_fits_is_planned(exp):
  p = plan(exp, GenerateOptions(num_samples=16), num_devices=2)
  assert (p.batch_size, p.num_batches, p.shape) == (16, 1, (8, 16, 16, 3))


def test_the_probe_count_is_refused_in_one_line_naming_the_flag(exp, monkeypatch):
  """sample.py --num_samples 5000000: 114 GiB of float32 8x16x16x3 samples on a 64 GiB machine."""
  monkeypatch.setattr(host, "host_memory_bytes", lambda: 64 * GiB)
  with pytest.raises(ValueError, match=r"^--num_samples=5000000 \(8 frames of 16x16x3, N x frames x "
                     r"H x W x C x 4 bytes\) needs about 114\.4 GiB of host memory, more than 90% of "
                     r"this machine's 64\.0 GiB; lower --num_samples") as err:
    plan(exp, GenerateOptions(num_samples=5_000_000), num_devices=1)
  assert "\n" not in str(err.value)


def test_extension_frames_count_and_no_machine_holds_a_billion(exp):
  with pytest.raises(ValueError, match=r"--num_samples=1000000000 \(32 frames of 16x16x3"):
    plan(exp, GenerateOptions(num_samples=10**9, num_frames=32), num_devices=1)


def test_unknown_memory_checks_nothing(exp, monkeypatch):
  monkeypatch.setattr(host, "host_memory_bytes", lambda: 0)
  plan(exp, GenerateOptions(num_samples=5_000_000), num_devices=1)


def test_a_distilled_student_samples_with_its_steps_by_default(exp):
  config = configs.default.get_config("tiny")
  config.sample.update(sampler="ancestral", num_steps=64, eta=0.5, corrector_steps=1, clip_x=False)
  assert plan(ExperimentConfig.from_config_dict(config), GenerateOptions(), 1).sampler_config == (
      ExperimentConfig.from_config_dict(config).sample.sampler_config())  # an ordinary run: as set
  config.distill.update(teacher_workdir="/runs/teacher", student_steps=8)
  student = ExperimentConfig.from_config_dict(config)
  s = plan(student, GenerateOptions(), num_devices=1).sampler_config  # the trainer's samples
  assert (s.sampler, s.num_steps, s.eta, s.corrector_steps, s.clip_x) == ("ddim", 8, 0.0, 0, False)
  assert options_from(student).sampling == s  # sample.py with no sampler flags
  flagged = options_from(student, num_steps=16, sampler="dpmpp2m").sampling  # flags still win
  assert (flagged.sampler, flagged.num_steps) == ("dpmpp2m", 16)
