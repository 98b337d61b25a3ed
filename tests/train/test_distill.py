"""Progressive distillation through the trainer (train/distill.py, the loop's hook): a round from the
micro teacher run, its manifest, resume equal to never stopping, sample.py's defaults for a
student, and the errors. The teacher is the `straight` micro run (tests/train/conftest.py)."""

import json
import os

import jax
import numpy as np
import pytest

from tests.train.conftest import micro_config, read_checkpoint, steps_of
from vdm_jax import checkpoints, generation
from vdm_jax.config import ConfigError, ExperimentConfig
from vdm_jax.train import distill, loop
from vdm_jax.train.optimizer import make_optimizer
from vdm_jax.train.state import create_train_state

STUDENT_STEPS = 2


def student_config(data_dir, teacher, student_steps=STUDENT_STEPS, **train):
  return micro_config(data_dir, distill=dict(teacher_workdir=teacher, student_steps=student_steps),
                      train=train)


@pytest.fixture(scope="module")
def student(straight, tmp_path_factory, train_data_dir):
  """Round 1: a student for 2 steps of the 4-step micro run, trained 4 steps in one go."""
  workdir = str(tmp_path_factory.mktemp("student"))
  return workdir, loop.train_and_evaluate(student_config(train_data_dir, straight[0]), workdir)


def test_round_trains_and_records_the_teacher(straight, student):
  workdir, last = student
  assert last["step"] == 4 and np.isfinite(last["loss"]) and steps_of(workdir) == [2, 4]
  _, step, manifest = checkpoints.read_experiment(workdir)
  assert step == 4
  assert manifest["distill"] == {"teacher_workdir": os.path.abspath(straight[0]), "teacher_step": 4,
                                 "round": 1, "student_steps": 2, "teacher_steps": 4}
  # The trainer's own samples (sample section: 2 steps of DDIM by default) use the student's steps.
  with open(os.path.join(workdir, "samples", "step_00000004", "protocol.json")) as f:
    protocol = json.load(f)
  assert protocol["sampler"] == "ddim" and protocol["num_steps"] == STUDENT_STEPS


def test_student_starts_from_the_teachers_ema(straight, train_data_dir):
  exp = ExperimentConfig.from_config_dict(student_config(train_data_dir, straight[0]))
  mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"))
  _, _, state = create_train_state(exp.model, make_optimizer(exp.optim, 4), mesh, exp.train.seed)
  teacher = distill.load_teacher(exp, state["params"])
  fresh = distill.start_from_teacher(state, teacher)
  teacher_ema = jax.tree.leaves(read_checkpoint(straight[0], 4)[0]["ema"])
  for key in ("params", "ema"):
    leaves = jax.tree.leaves(fresh[key])
    assert len(leaves) == len(teacher_ema) and fresh[key] is not teacher.params
    for got, want in zip(leaves, teacher_ema):
      np.testing.assert_array_equal(np.asarray(got), want)
  assert teacher.round == 1 and teacher.step == 4


def test_resume_mid_round_is_bit_identical(straight, student, tmp_path, train_data_dir):
  workdir = str(tmp_path)
  assert loop.train_and_evaluate(student_config(train_data_dir, straight[0], num_steps=2),
                                 workdir)["step"] == 2
  assert loop.train_and_evaluate(student_config(train_data_dir, straight[0]), workdir)["step"] == 4
  resumed, resumed_data = read_checkpoint(workdir, 4)
  never_stopped, never_stopped_data = read_checkpoint(student[0], 4)
  assert resumed_data == never_stopped_data
  jax.tree.map(np.testing.assert_array_equal, resumed, never_stopped)


def test_sampling_defaults_to_the_students_steps(student):
  model = generation.restore_model(student[0])
  opts = generation.options_from(model.exp, num_samples=1)
  assert opts.sampling.sampler == "ddim" and opts.sampling.num_steps == STUDENT_STEPS
  assert opts.sampling.eta == 0.0 and opts.sampling.corrector_steps == 0
  flagged = generation.options_from(model.exp, num_samples=1, num_steps=3, sampler="dpmpp2m")
  assert flagged.sampling.num_steps == 3 and flagged.sampling.sampler == "dpmpp2m"  # flags win


def test_dpmpp2m_through_generate_compiles_once_for_its_chunks(straight):
  model = generation.restore_model(straight[0])
  opts = generation.options_from(model.exp, num_samples=2, sampler="dpmpp2m", num_steps=3,
                                 progress_chunks=3)
  chunked, protocol = generation.generate(model, opts)
  assert protocol["sampler"] == "dpmpp2m" and protocol["compilations"] == 1
  whole, _ = generation.generate(model, generation.options_from(
      model.exp, num_samples=2, sampler="dpmpp2m", num_steps=3, progress_chunks=1))
  np.testing.assert_array_equal(chunked, whole)
  assert np.isfinite(chunked).all() and np.abs(chunked).max() <= 1.0


def test_round_two_bookkeeping_and_errors(straight, student, tmp_path, train_data_dir):
  exp = ExperimentConfig.from_config_dict(student_config(train_data_dir, student[0], 1))
  mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"))
  _, _, state = create_train_state(exp.model, make_optimizer(exp.optim, 4), mesh, exp.train.seed)
  teacher = distill.load_teacher(exp, state["params"])
  assert teacher.round == 2 and teacher.manifest_entry(1)["teacher_steps"] == 2
  with pytest.raises(ConfigError, match="its student is for 1"):  # a student of a 2-step student
    loop.train_and_evaluate(student_config(train_data_dir, student[0], 2), str(tmp_path / "a"))
  with pytest.raises(ConfigError, match="student for 2 steps"):  # a round's workdir, another round
    loop.train_and_evaluate(student_config(train_data_dir, straight[0], 4), student[0])
  with pytest.raises(ConfigError, match="ordinary training run"):
    loop.train_and_evaluate(student_config(train_data_dir, straight[0]), straight[0])
  other = micro_config(train_data_dir, model=dict(base_channels=16),
                       distill=dict(teacher_workdir=straight[0], student_steps=2))
  with pytest.raises(ConfigError, match="teacher's model"):
    loop.train_and_evaluate(other, str(tmp_path / "b"))
