"""Progressive distillation, every round (Salimans & Ho 2022): halve the sampling steps per round.

    python scripts/distill.py --config configs/default.py --teacher_workdir runs/default \
        --workdir runs/default_distill --first_steps 128 --final_steps 4

Round k trains, with train.py's loop and the config's train/optim sections, a student for
first_steps / 2^(k-1) DDIM steps in WORKDIR/steps_<N>, from the previous round's student (the first
round's teacher, --teacher_workdir, samples with 2 x first_steps). Running it again skips finished
rounds and resumes an unfinished one. One round alone is train.py with --config.distill.* set.
Each student samples with its steps by default: python sample.py --workdir WORKDIR/steps_<N>.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from vdm_jax.parallel.distributed import DISTRIBUTED_FLAGS, initialize_from_flags  # noqa: F401
from vdm_jax.runtime import setup_runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:tiny]; its "
                                "train and optim sections are every round's.", lock_config=False)
flags.DEFINE_string("teacher_workdir", None, "The trained model the first round distils.")
flags.DEFINE_string("workdir", None, "Each round's student goes into WORKDIR/steps_<N>.")
flags.DEFINE_integer("first_steps", 128, "Sampling steps of the first student (its teacher's / 2).")
flags.DEFINE_integer("final_steps", 4, "Sampling steps of the last student.")
flags.mark_flags_as_required(["config", "teacher_workdir", "workdir"])


def rounds(root: str, teacher_workdir: str, first_steps: int,
           final_steps: int) -> list[tuple[int, str, str]]:
  """[(student steps N, teacher workdir, student workdir)] from first_steps halving to final_steps."""
  if not 1 <= final_steps <= first_steps:
    raise ValueError(f"need 1 <= final_steps ({final_steps}) <= first_steps ({first_steps})")
  plan, n, teacher = [], first_steps, teacher_workdir
  while n >= final_steps:
    student = os.path.join(root, f"steps_{n}")
    plan.append((n, teacher, student))
    teacher, n = student, n // 2
  return plan


def finished(workdir: str, num_steps: int) -> bool:
  """The round in workdir has a checkpoint at (or past) train.num_steps."""
  from vdm_jax import checkpoints
  try:
    return checkpoints.read_experiment(workdir)[1] >= num_steps
  except FileNotFoundError:
    return False


def main(argv):
  del argv
  setup_runtime()
  from vdm_jax.config import ConfigError, ExperimentConfig
  config = FLAGS.config
  try:  # every value in range, then the devices: one per core on a CPU, jax.distributed on a pod
    ExperimentConfig.from_config_dict(config)
    initialize_from_flags(config.train.global_batch_size // config.optim.grad_accum_steps,
                          dict(config.mesh))
  except (ConfigError, ValueError) as e:
    sys.exit(f"distill.py: {e}")
  from vdm_jax.train.loop import train_and_evaluate
  for n, teacher, student in rounds(FLAGS.workdir, FLAGS.teacher_workdir, FLAGS.first_steps,
                                    FLAGS.final_steps):
    if finished(student, config.train.num_steps):
      print(f"distill.py: round for {n} steps is finished in {student}; skipped")
      continue
    round_config = config.copy_and_resolve_references()
    round_config.distill.update(teacher_workdir=teacher, student_steps=n, teacher_step=-1)
    try:
      train_and_evaluate(round_config, student)
    except (ConfigError, ValueError, FileNotFoundError) as e:
      sys.exit(f"distill.py: round for {n} steps: {e}")


if __name__ == "__main__":
  app.run(main)
