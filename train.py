"""Train a video diffusion model.

    python train.py --config configs/default.py --workdir runs/default [--config.train.num_steps=...]

Running the same command again resumes from the workdir's latest checkpoint. Multi-host: pass
--coordinator_address/--num_processes/--process_id (or rely on TPU-pod / SLURM auto-detection with
--distributed); each host runs the same command. A config error (an unknown --config.<section>.<key>,
a value out of range, a batch the dataset or this machine's memory cannot take) stops it before
anything is compiled, with one line saying what to change.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from vdm_jax.parallel.distributed import DISTRIBUTED_FLAGS, initialize_from_flags  # noqa: F401
from vdm_jax.runtime import setup_runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:tiny].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go.")
flags.DEFINE_bool("strict_checkpoints", False, "Stop with an error when the latest checkpoint is "
                  "damaged, instead of resuming from the newest intact one.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, after checking every --config.<section>.<key> against the known keys.

  ml_collections rejects an unknown key of the locked config with chained tracebacks; this exits
  with one line naming the nearest known key and all of them instead.
  """
  from vdm_jax.config import ConfigError, check_overrides
  try:
    args = FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  except flags.Error:
    args = argv[1:]  # absl reports the bad --flagfile itself
  try:
    check_overrides(args)
  except ConfigError as e:
    sys.exit(f"train.py: {e}")
  return app.parse_flags_with_usage(argv)


def main(argv):
  del argv
  setup_runtime()
  from vdm_jax.config import ConfigError, ExperimentConfig
  c = FLAGS.config
  from vdm_jax.checkpoints import CheckpointDamaged
  from vdm_jax.train.workdir import WorkdirError
  try:
    ExperimentConfig.from_config_dict(c)  # every value in range before the devices start
    initialize_from_flags(c.train.global_batch_size // c.optim.grad_accum_steps, dict(c.mesh))
    from vdm_jax.train.loop import train_and_evaluate
    train_and_evaluate(FLAGS.config, FLAGS.workdir, strict_checkpoints=FLAGS.strict_checkpoints)
  except (ConfigError, CheckpointDamaged, ValueError, FileNotFoundError, WorkdirError) as e:
    sys.exit(f"train.py: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
